"""`adaptrix plugins list`, `detect`, `--help`: output, failures, and no heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.fake_dist import make_dist

HEAVY = ("torch", "transformers", "peft")


def run_cli(*args, env=None, check=True):
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "adaptrix", *args],
        capture_output=True, text=True, check=check, env={**os.environ, **(env or {})},
    )


def heavy_imports(stderr: str) -> set[str]:
    found = set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name.split(".")[0] in HEAVY:
                found.add(name.split(".")[0])
    return found


@pytest.mark.parametrize(
    "args",
    [("plugins", "list"), ("plugins", "list", "--json"), ("--help",), ("plugins", "--help"), ("detect", "--help")],
)
def test_discovery_and_help_import_no_torch_transformers_or_peft(args):
    out = run_cli(*args)
    assert heavy_imports(out.stderr) == set()


def test_detect_imports_no_heavy_library(fixtures_dir):
    out = run_cli("detect", str(fixtures_dir / "model-configs" / "qwen3_4b.json"), "--json")
    assert heavy_imports(out.stderr) == set()
    data = json.loads(out.stdout)
    assert data["family"] == "qwen" and data["plugin"] == "qwen" and data["context_length"] == 40960
    assert data["target_modules"][:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_detect_table_and_refusal(fixtures_dir):
    out = run_cli("detect", str(fixtures_dir / "model-configs" / "phi3.json"))
    assert "family          phi" in out.stdout and "qkv_proj" in out.stdout
    bad = run_cli("detect", str(fixtures_dir / "model-configs" / "bge_large.json"), check=False)
    assert bad.returncode == 2
    assert "BertModel" in bad.stderr and "not a causal language model" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_plugins_list_table_shows_every_family():
    out = run_cli("plugins", "list").stdout
    header = out.splitlines()[0]
    for column in ("PLUGIN", "DISTRIBUTION", "VERSION", "ENTRY POINT", "FAMILIES", "HOOKS", "STATUS", "ERROR"):
        assert column in header
    for name in ("qwen", "phi", "llama", "mistral", "gemma", "deepseek", "generic"):
        assert any(line.startswith(name + " ") and " ok" in line for line in out.splitlines())


def test_plugins_list_works_with_a_broken_plugin(tmp_path):
    site = make_dist(tmp_path, "adaptrix-broken", {"broken": "broken_cli_plugin"}, {"broken_cli_plugin": "raise ImportError('kaput')\n"})
    env = {"PYTHONPATH": str(site), "ADAPTRIX_STRICT_PLUGINS": "0"}
    out = run_cli("plugins", "list", "--json", env=env)
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["broken"]["status"] == "failed" and "kaput" in plugins["broken"]["error"]
    assert plugins["qwen"]["status"] == "ok"
    table = run_cli("plugins", "list", env=env).stdout
    assert "failed" in table and "kaput" in table


def test_disabled_plugins_are_shown(tmp_path):
    out = run_cli("plugins", "list", "--json", env={"ADAPTRIX_DISABLE_PLUGINS": "gemma"})
    statuses = {p["name"]: p["status"] for p in json.loads(out.stdout)["plugins"]}
    assert statuses["gemma"] == "blocked" and statuses["qwen"] == "ok"
    bad = run_cli("plugins", "list", env={"ADAPTRIX_DISABLE_PLUGINS": "gemmma"}, check=False)
    assert bad.returncode == 2 and "unknown plugin(s) gemmma" in bad.stderr


def test_version():
    out = run_cli("--version")
    assert out.stdout.strip().startswith("adaptrix 0.")


def test_vision_language_refusal_imports_no_heavy_library(fixtures_dir):
    """Whether transformers has a text-only class is read from its source, not by importing it."""
    out = run_cli("detect", str(fixtures_dir / "model-configs" / "qwen2_vl_2b.json"), check=False)
    assert out.returncode == 2 and "Qwen2VLForConditionalGeneration" in out.stderr
    assert "no text-only causal LM class" in out.stderr
    assert heavy_imports(out.stderr) == set()
