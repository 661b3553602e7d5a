"""The real `pip install adaptrix adaptrix-qwen` path: wheels into a fresh virtual environment.

Slow (about a minute: the fresh environment gets the pinned CPU torch and the
other dependencies from pip's cache). Set ADAPTRIX_SKIP_PACKAGING=1 to skip it
in a quick local run; CI always runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(os.environ.get("ADAPTRIX_SKIP_PACKAGING") == "1", reason="ADAPTRIX_SKIP_PACKAGING=1"),
]


def run(*cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out,
        REPO, REPO / "plugins" / "adaptrix-qwen")
    return sorted(out.glob("*.whl"))


def test_core_wheel_holds_only_the_core(wheels):
    core = next(w for w in wheels if w.name.startswith("adaptrix-"))
    names = zipfile.ZipFile(core).namelist()
    assert "adaptrix/plugins/hookspecs.py" in names and "adaptrix/cli/main.py" in names
    assert not [n for n in names if n.startswith(("adaptrix_", "tests/", "plugins/"))]
    qwen = next(w for w in wheels if w.name.startswith("adaptrix_qwen-"))
    entry_points = zipfile.ZipFile(qwen).read("adaptrix_qwen-0.1.0.dist-info/entry_points.txt").decode()
    assert "[adaptrix]" in entry_points and "qwen = adaptrix_qwen" in entry_points


def test_fresh_venv_with_core_and_one_plugin(wheels, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    # The pinned CPU torch first: an open range would pull a CUDA build of several GB.
    run(py, "-m", "pip", "install", "-q", "torch==2.13.0")
    run(py, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", *wheels)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["ADAPTRIX_STRICT_PLUGINS"] = "1"
    listed = json.loads(run(venv / "bin" / "adaptrix", "plugins", "list", "--json", env=env).stdout)
    assert [(p["name"], p["distribution"], p["status"]) for p in listed["plugins"]] == [("qwen", "adaptrix-qwen", "ok")]
    assert listed["families"] == {"qwen": "qwen"}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "max_position_embeddings": 40960}))
    detected = json.loads(run(venv / "bin" / "adaptrix", "detect", cfg, "--json", env=env).stdout)
    assert (detected["family"], detected["plugin"]) == ("qwen", "qwen")
    # Only the installed plugin exists there: a Llama config is not claimed.
    cfg.write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    refused = subprocess.run([venv / "bin" / "adaptrix", "detect", cfg], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "installed families: qwen" in refused.stderr
    # The heavy stack the engine needs came with `pip install adaptrix`.
    run(py, "-c", "import torch, transformers, peft, safetensors; print(torch.__version__)", env=env)
