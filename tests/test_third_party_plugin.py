"""The example plugin in examples/plugins/ adds a family with no change to the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrix.detection import detect
from adaptrix.plugins import PluginHost
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
