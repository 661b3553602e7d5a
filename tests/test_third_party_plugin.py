"""The example plugin in examples/plugins/ adds a family with no change to the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrix.plugins.detection import detect
from adaptrix.plugins.host import PluginHost
from adaptrix.types import LoadOptions
from support.fake_dist import entry_points_under, make_dist

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "adaptrix-stablelm"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """The example plugin "installed": its source on sys.path plus a dist-info with its entry point."""
    site = make_dist(tmp_path / "site", "adaptrix-stablelm", {"stablelm": "adaptrix_stablelm"}, version="0.1.0")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("adaptrix_stablelm", None)


def test_third_party_family_is_discovered_and_used(installed_example, tiny_model):
    assert [ep.name for ep in entry_points_under(installed_example)] == ["stablelm"]
    host = PluginHost(environ={}, strict=True)
    host.load_entry_points()  # the same discovery the CLI and the engine use
    assert host.record("stablelm").distribution == "adaptrix-stablelm"
    assert host.families()["stablelm"] == "stablelm"
    folder = tiny_model("stablelm")
    d = detect(str(folder), host=host)
    # Without the plugin this model is "generic"; with it, it has a family of its own.
    assert (d.family, d.plugin) == ("stablelm", "stablelm")
    assert d.generation.top_p == 0.95
    loaded, plugin = host.call_family("load_model", "stablelm", model_id=str(folder), options=LoadOptions())
    assert plugin == "stablelm" and loaded.family == "stablelm"
    without = PluginHost(environ={"ADAPTRIX_DISABLE_PLUGINS": "stablelm"}, strict=True)
    without.load_entry_points()
    assert detect(str(folder), host=without).family == "generic"


def test_third_party_plugin_is_listed_by_the_cli(installed_example):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed_example), str(EXAMPLE)]))
    out = subprocess.run(
        [sys.executable, "-m", "adaptrix", "plugins", "list", "--json"], env=env, capture_output=True, text=True, check=True
    )
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["stablelm"]["status"] == "ok"
    assert plugins["stablelm"]["distribution"] == "adaptrix-stablelm"
    assert plugins["stablelm"]["families"] == ["stablelm"]
    assert {"qwen", "generic"} <= set(plugins)


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"


def minimal_plugin_source() -> str:
    """The plugin the guide leads with: two hooks taking a subset of the spec's arguments,
    no families(), no load_model, no default_generation_config."""
    text = GUIDE.read_text()
    section = text[text.index("## The smallest plugin"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def minimal_plugin(tmp_path, monkeypatch):
    """A minimal plugin "installed" as a dist-info, as the process-wide host sees it."""
    from adaptrix.plugins import host as plugins

    site = make_dist(tmp_path / "site", "adaptrix-tinyfam", {"tinyfam": "tinyfam_plugin"}, {"tinyfam_plugin": minimal_plugin_source()})
    monkeypatch.syspath_prepend(str(site))
    host = PluginHost(environ={}, strict=True)
    host.load_entry_points()
    plugins.set_host(host)
    yield host, site
    plugins.set_host(None)
    sys.modules.pop("tinyfam_plugin", None)


def test_minimal_plugin_detects_loads_and_generates_through_the_engine(minimal_plugin, tiny_model, one_thread):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptrix import Engine

    host, _ = minimal_plugin
    rec = host.record("tinyfam")
    assert rec.status == "ok" and rec.families == ()
    assert rec.fallback_hooks == ("load_model", "default_generation_config")
    folder = tiny_model("stablelm")
    d = detect(str(folder), host=host)
    # Without the plugin this model is "generic"; the plugin's detect_family makes it own "stablelm".
    assert (d.family, d.plugin) == ("stablelm", "tinyfam")
    assert d.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert d.fallback_hooks == ("load_model", "default_generation_config")
    assert d.generation.top_p is not None  # the global defaults, not a crash

    engine = Engine(str(folder), progress=False)
    engine.initialize()
    try:
        assert (engine.family, engine.plugin) == ("stablelm", "tinyfam")
        text = engine.generate("What is machine learning?", max_new_tokens=8, temperature=0.0)
    finally:
        engine.cleanup()
    # Oracle: raw transformers greedy decoding of the same chat prompt.
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is machine learning?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert text and text == expected.strip()


def test_minimal_plugin_is_reported_by_the_cli_with_its_fallback_hooks(minimal_plugin, tiny_model):
    _, site = minimal_plugin
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run(
        [sys.executable, "-m", "adaptrix", "plugins", "list", "--json"], env=env, capture_output=True, text=True, check=True
    )
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["tinyfam"]["fallback_hooks"] == ["load_model", "default_generation_config"]
    assert plugins["qwen"]["fallback_hooks"] == []
    table = subprocess.run(
        [sys.executable, "-m", "adaptrix", "plugins", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "FROM CORE" in table.splitlines()[0]
    line = next(line for line in table.splitlines() if line.startswith("tinyfam "))
    assert "load_model" in line
    folder = str(tiny_model("stablelm"))
    det = subprocess.run(
        [sys.executable, "-m", "adaptrix", "detect", folder, "--json"], env=env, capture_output=True, text=True, check=True
    )
    data = json.loads(det.stdout)
    assert (data["family"], data["plugin"]) == ("stablelm", "tinyfam")
    assert data["fallback_hooks"] == ["load_model", "default_generation_config"]
    table = subprocess.run(
        [sys.executable, "-m", "adaptrix", "detect", folder], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "from core" in table and "load_model, default_generation_config" in table
