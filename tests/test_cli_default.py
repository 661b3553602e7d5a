"""Every subcommand works without --model: on the embedded SmolLM2 GGUF, as on a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptrix.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"


@pytest.fixture(scope="module")
def default_model():
    from adaptrix.errors import ModelConfigError
    from adaptrix.models.default_model import default_model_path

    try:
        return default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))


def test_every_subcommand_without_model(default_model, tmp_path, capsys, one_thread):
    from adaptrix.models.default_model import HUB_ID

    assert main(["detect", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["family"] == "llama" and d["model_id"] == str(default_model)

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gguf_file"] == str(default_model) and info["family"] == "llama"

    assert main(["generate", "--temperature", "0", "-n", "12", "--no-stream", "What is 2 + 2?"]) == 0
    assert capsys.readouterr().out.strip()

    assert main(["adapters", "list", "--adapters-dir", str(EXAMPLES), "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"math_specialist", "pirate_style"} <= names
    assert main(["adapters", "inspect", "math_specialist", "--adapters-dir", str(EXAMPLES)]) == 0
    assert "q_proj" in capsys.readouterr().out
    assert main(["adapters", "validate", "math_specialist", "--adapters-dir", str(EXAMPLES), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["model"] == HUB_ID and not report["warnings"]

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 2?", "completion": "4"}) + "\n")
    out = tmp_path / "adapters" / "one_step"
    assert main(["train", "--data", str(data), "--output", str(out), "--max-steps", "1", "--batch-size", "1",
                 "--targets", "q_proj", "--no-progress", "--threads", "1"]) == 0
    assert "1 steps" in capsys.readouterr().out
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == HUB_ID and saved["target_modules"] == ["q_proj"]

    assert main(["adapters", "list", "--adapters-dir", str(out.parent), "--model", str(default_model)]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    assert line.startswith("one_step") and "compatible" in line and "incompatible" not in line
    shutil.rmtree(out)
