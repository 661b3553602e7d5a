"""``adaptrix adapters list|inspect|validate`` on real adapters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adir(tiny_model, tmp_path_factory):
    from support.adapters import make_adapter

    root = tmp_path_factory.mktemp("cli-adapters")
    make_adapter(tiny_model("qwen3"), root / "qwen-math", seed=1, meta={"task_type": "math", "description": "sums"})
    make_adapter(tiny_model("llama"), root / "llama-chat", seed=2, r=8)
    return root


def _cli(*args):
    from adaptrix.cli.main import main

    return main(list(args))


def test_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom adaptrix.cli.main import build_parser\n"
        "p = build_parser()\n"
        "for a in (['adapters', '--help'], ['adapters', 'list', '--help'], ['adapters', 'validate', '--help']):\n"
        "    try:\n        p.parse_args(a)\n    except SystemExit:\n        pass\n"
        "print([m for m in ('torch', 'transformers', 'peft', 'safetensors.torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_list_with_model(adir, tiny_model, capsys):
    assert _cli("adapters", "list", "--adapters-dir", str(adir), "--model", str(tiny_model("qwen3"))) == 0
    out = capsys.readouterr().out
    assert "NAME" in out and "COMPATIBILITY" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "compatible" in lines["qwen-math"] and "incompatible" not in lines["qwen-math"]
    assert "incompatible" in lines["llama-chat"] and " 8 " in lines["llama-chat"]
    assert _cli("adapters", "list", "--adapters-dir", str(adir), "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["qwen-math"]["base_family"] == "qwen" and rows["llama-chat"]["base_family"] == "llama"
    assert rows["qwen-math"]["task_type"] == "math"


def test_inspect(adir, capsys):
    assert _cli("adapters", "inspect", str(adir / "qwen-math")) == 0
    out = capsys.readouterr().out
    assert "q_proj, v_proj" in out and "qwen (from config)" in out and "math" in out
    assert _cli("adapters", "inspect", "qwen-math", "--adapters-dir", str(adir), "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["rank"] == 4 and d["tensors"] == 8 and len(d["tensor_shapes"]) == 8


def test_inspect_config_only(tmp_path, capsys):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj"],
                    "base_model_name_or_path": "mistralai/Mistral-7B-Instruct-v0.1"})
    )
    assert _cli("adapters", "inspect", str(tmp_path / "cfg")) == 0
    out = capsys.readouterr().out
    assert "absent (config only" in out and "mistral (from id)" in out


def test_validate_exit_codes(adir, tiny_model, capsys):
    model = str(tiny_model("qwen3"))
    assert _cli("adapters", "validate", str(adir / "qwen-math"), "--model", model) == 0
    assert "compatible" in capsys.readouterr().out
    assert _cli("adapters", "validate", str(adir / "llama-chat"), "--model", model, "--json") == 1
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is False and "family 'llama'" in d["errors"][0]


def test_broken_adapter_does_not_hide_the_others(adir, tiny_model, tmp_path, capsys):
    import shutil

    root = tmp_path / "adapters"
    shutil.copytree(adir / "qwen-math", root / "good")
    (root / "bad").mkdir()
    (root / "bad" / "adapter_config.json").write_text("[1, 2]")
    assert _cli("adapters", "list", "--adapters-dir", str(root), "--model", str(tiny_model("qwen3"))) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line and not line.startswith("error")}
    assert "compatible" in lines["good"] and "incompatible" not in lines["good"]
    assert "incompatible" in lines["bad"]
    assert "error: bad: " in out and "adapter_config.json" in out
