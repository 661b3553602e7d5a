"""``adaptrix serve``'s flags: values that would make a useless or unsafe server are usage errors naming the flag,
the API-key warning, the ready line. No server is started (uvicorn's run is replaced)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from adaptrix.cli.main import build_parser, main  # noqa: E402


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(argv)
    assert exit.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [
    ("--max-queue", "0"), ("--max-queue", "-1"), ("--max-body-bytes", "0"), ("--max-batch", "0"),
    ("--threads", "0"), ("--max-loaded-adapters", "0"), ("--port", "70000"), ("--port", "0"),
    ("--header-timeout", "0"), ("--body-timeout", "-5"), ("--body-timeout", "nan"), ("--max-queue", "many"),
    ("--api-key", ""), ("--api-key", "clé"), ("--api-key", "two words"), ("--cors-origin", "http://x.org/"),
    ("--cors-origin", "localhost:3000"),
])
def test_useless_values_are_usage_errors_naming_the_flag(flag, value, capsys):
    err = _usage_error(["serve", flag, value], capsys)
    assert f"argument {flag}:" in err, err
    assert "Traceback" not in err


def test_threads_beyond_the_cpus_is_refused(capsys):
    from adaptrix.cli.generate_cmd import usable_cpus

    cpus = usable_cpus()
    err = _usage_error(["serve", "--threads", str(cpus + 1)], capsys)
    assert f"from 1 to {cpus}" in err and "--threads" in err
    assert build_parser().parse_args(["serve", "--threads", str(cpus)]).threads == cpus


def test_sound_values_parse():
    args = build_parser().parse_args([
        "serve", "--max-queue", "1", "--max-batch", "2", "--max-body-bytes", "10", "--port", "65535", "--api-key",
        "s3cr3t-Key_~!", "--header-timeout", "0.5", "--cors-origin", "http://localhost:3000", "--cors-origin",
        "https://chat.example.com"])
    assert (args.max_queue, args.max_batch, args.port, args.api_key) == (1, 2, 65535, "s3cr3t-Key_~!")
    assert args.cors_origin == ["http://localhost:3000", "https://chat.example.com"] and args.header_timeout == 0.5


@pytest.mark.parametrize("field,value", [("max_queue", 0), ("max_batch", 0), ("max_body_bytes", 0),
                                         ("api_key", ""), ("api_key", "clé"), ("header_timeout", 0),
                                         ("cors_origins", ("http://a/",))])
def test_serve_options_refuse_the_same_values(field, value):
    from adaptrix.serve.app import ServeOptions

    with pytest.raises(ValueError, match=f"ServeOptions.{field}"):
        ServeOptions(**{field: value})


class _Started(Exception):
    """Raised by the replaced uvicorn run: the command got that far."""


@pytest.fixture
def no_uvicorn(monkeypatch):
    """``uvicorn.Server.run`` replaced: records the config, loads the engine as the server would, starts nothing."""
    import uvicorn

    seen = {}

    def run(self, *a, **kw):
        seen["config"] = self.config
        if seen.get("load"):
            self.config.app.state.server.make_engine()
        raise _Started

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


@pytest.mark.parametrize("key", [None, "k3y"])
def test_the_open_host_warning_only_without_a_key(no_uvicorn, capsys, key):
    argv = ["serve", "--host", "0.0.0.0"] + (["--api-key", key] if key else [])
    with pytest.raises(_Started):
        main(argv)
    err = capsys.readouterr().err
    assert ("without --api-key" in err) is (key is None), err
    assert "load adapters" not in err  # loading is off: the warning does not mention it


def test_empty_api_key_never_starts_a_server(no_uvicorn, capsys):
    """``--api-key "$UNSET"`` used to serve without authentication, silently."""
    assert "config" not in no_uvicorn
    with pytest.raises(SystemExit):
        main(["serve", "--api-key", "", "--host", "0.0.0.0"])
    assert "config" not in no_uvicorn and "API key is empty" in capsys.readouterr().err


def test_ipv6_ready_line_brackets_the_address(no_uvicorn, capsys, tiny_model, tmp_path):
    no_uvicorn["load"] = True
    model = tiny_model("qwen2")
    with pytest.raises(_Started):
        main(["serve", "--model", str(model), "--backend", "transformers", "--host", "::1", "--port", "8123",
              "--adapters-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "ready on http://[::1]:8123/" in err, err
    config = no_uvicorn["config"]
    assert (config.host, config.port) == ("::1", 8123)


def test_base_url():
    from adaptrix.serve.http import base_url, is_loopback

    assert base_url("::1", 80) == "http://[::1]:80/"
    assert base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert base_url("localhost", 1) == "http://localhost:1/"
    assert all(map(is_loopback, ["127.0.0.2", "::1", "localhost"])) and not is_loopback("0.0.0.0")
