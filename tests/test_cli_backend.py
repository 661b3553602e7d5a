"""``--backend`` on every CLI command that loads or validates against a model."""

from __future__ import annotations

import inspect
import json

import pytest

from adaptrix.cli.main import build_parser, main

ENGINE_TAKES_BACKEND = "backend" in inspect.signature(__import__("adaptrix").Engine).parameters
needs_engine_backend = pytest.mark.skipif(
    not ENGINE_TAKES_BACKEND, reason="Engine(backend=...) is not on this branch yet (the integrator's engine refactor)"
)

#: Every command that loads a model (or checks adapters against one), with its required arguments.
COMMANDS = {
    "generate": ["generate", "Hi"],
    "chat": ["chat"],
    "info": ["info"],
    "serve": ["serve"],
    "adapters list": ["adapters", "list"],
    "adapters validate": ["adapters", "validate", "some-adapter"],
    "train": ["train", "--data", "d.jsonl", "--output", "out"],
    "eval": ["eval", "--tasks", "math"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_model_command_takes_backend(command):
    parser = build_parser()
    argv = COMMANDS[command]
    assert parser.parse_args(argv).backend == "auto"
    assert parser.parse_args(argv + ["--backend", "transformers"]).backend == "transformers"


def test_engine_gets_backend_only_when_named(monkeypatch):
    """``auto`` leaves the choice to the engine; a named backend is passed on (generate, info, chat, serve share it)."""
    from adaptrix.cli.generate_cmd import engine_options

    parser = build_parser()
    auto = engine_options(parser.parse_args(["info"]))
    assert "backend" not in auto and auto["model_id"] is None
    named = engine_options(parser.parse_args(["info", "--backend", "LlamaCpp"]))
    assert named["backend"] == "llamacpp"
    served = engine_options(parser.parse_args(["serve", "--backend", "transformers"]), progress=True)
    assert served["backend"] == "transformers" and served["progress"] is True


def test_train_refuses_another_backend_saying_what_to_do(tmp_path, capsys):
    out = tmp_path / "adapter"
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1?", "completion": "2"}\n')
    assert main(["train", "--data", str(data), "--output", str(out), "--backend", "llamacpp"]) == 2
    err = capsys.readouterr().err
    assert "--backend llamacpp" in err and "runs on the transformers backend only" in err
    assert "Train with --backend transformers" in err and "adaptrix adapters convert" in err
    assert not out.exists()


def test_train_accepts_the_reference_backend():
    from adaptrix.cli.train_cmd import check_backend

    for name in ("auto", "transformers", "Transformers"):
        check_backend(build_parser().parse_args(COMMANDS["train"] + ["--backend", name]))


def test_info_prints_backend_and_why(capsys):
    from adaptrix.cli.info_cmd import print_info

    print_info({"model_id": "m.gguf", "backend": "llamacpp", "backend_reason": "auto: a GGUF file"})
    out = capsys.readouterr().out
    assert "backend" in out and "llamacpp (auto: a GGUF file)" in out


# -- against a real (tiny) model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(tiny_model):
    return str(tiny_model("qwen3"))


@pytest.fixture(scope="module")
def adapter(qwen, tmp_path_factory):
    pytest.importorskip("peft")
    from support.adapters import make_adapter

    return make_adapter(qwen, tmp_path_factory.mktemp("backend-cli") / "qwen-ad")


def test_validate_reports_the_backend_and_refuses_an_unknown_one(qwen, adapter, capsys):
    assert main(["adapters", "validate", str(adapter), "--model", qwen, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["backend"] == "transformers" and report["backend_reason"].startswith("auto")
    assert main(["adapters", "validate", str(adapter), "--model", qwen, "--backend", "transformers"]) == 0
    assert "(backend transformers: asked for)" in capsys.readouterr().out
    assert main(["adapters", "validate", str(adapter), "--model", qwen, "--backend", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "backend 'nosuch' is not installed" in err and "installed backends: auto, transformers" in err
    assert main(["adapters", "list", "--adapters-dir", str(adapter.parent), "--model", qwen, "--backend", "nosuch"]) == 2
    assert "backend 'nosuch' is not installed" in capsys.readouterr().err


@needs_engine_backend
def test_info_names_the_backend_that_runs(qwen, capsys, one_thread):
    assert main(["info", "--model", qwen, "--backend", "transformers", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "transformers" and info["backend_reason"]
    assert main(["info", "--model", qwen]) == 0
    assert "transformers (auto" in capsys.readouterr().out


@needs_engine_backend
def test_generate_on_a_named_backend_equals_auto(qwen, capsys, one_thread):
    argv = ["generate", "-m", qwen, "--temperature", "0", "-n", "6", "--no-stream", "Hi"]
    assert main(argv) == 0
    auto = capsys.readouterr().out
    assert main(argv + ["--backend", "transformers"]) == 0
    assert capsys.readouterr().out == auto
    assert main(argv + ["--backend", "nosuch"]) == 2
    assert "backend 'nosuch'" in capsys.readouterr().err
