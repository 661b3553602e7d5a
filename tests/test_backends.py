"""Choosing a backend: the backends hook, auto and named choice, clear refusals, no torch on the llama.cpp path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrix.backends.choice import backend_records, choose_backend
from adaptrix.backends.contract import Backend
from adaptrix.errors import BackendError, PluginError
from adaptrix.plugins.host import PluginHost


class _Source:
    def __init__(self, gguf: bool):
        self.model_id = "m.gguf" if gguf else "folder"
        self.gguf_file = "m.gguf" if gguf else None


def _host(*plugins, strict=True) -> PluginHost:
    host = PluginHost(environ={}, strict=strict)
    host.load_entry_points()
    for i, plugin in enumerate(plugins):
        host.register(plugin, f"extra{i}")
    return host


def _installed() -> set[str]:
    return {r.name for r in backend_records(_host()) if r.status == "ok"}


def test_the_reference_backend_is_always_there_and_listed_first():
    records = backend_records(_host())
    assert records[0].name == "transformers" and records[0].plugin == "adaptrix"
    choice = choose_backend(_Source(gguf=False), "auto", _host())
    assert choice.name == "transformers" and choice.reason.startswith("auto: the reference backend")


@pytest.mark.skipif("llamacpp" not in _installed(), reason="adaptrix-llamacpp is not installed")
def test_auto_picks_llamacpp_for_gguf_and_refuses_it_for_a_folder():
    host = _host()
    assert [name for name, _ in host.call_all("backends")] == ["llamacpp"]
    assert choose_backend(_Source(gguf=True), "auto", host).name == "llamacpp"
    assert choose_backend(_Source(gguf=True), "transformers", host).reason == "asked for"
    with pytest.raises(BackendError, match="not a GGUF model.*backend='transformers'"):
        choose_backend(_Source(gguf=False), "llamacpp", host)


def test_unknown_backend_names_the_installed_ones():
    with pytest.raises(BackendError, match=r"backend 'vllm' is not installed; installed backends: auto, transformers"):
        choose_backend(_Source(gguf=False), "vllm", _host())


def test_a_third_party_backend_registered_by_hand_takes_part_in_auto():
    from adaptrix import hookimpl

    class Fast(Backend):
        name = "fast"
        summary = "a test backend"
        priority = 99

        def prefers(self, source):
            return True

        def load(self, source, options, host):  # pragma: no cover - never loaded here
            raise AssertionError

    class Missing(Backend):
        name = "missing"
        requires = ("adaptrix_no_such_module",)
        install_hint = "pip install adaptrix-missing"

        def load(self, source, options, host):  # pragma: no cover
            raise AssertionError

    class Plugin:
        @hookimpl
        def backends(self):
            return [Fast, Missing()]

    host = _host(Plugin())
    records = {r.name: r for r in backend_records(host)}
    assert records["fast"].status == "ok" and records["missing"].status == "missing"
    assert "pip install adaptrix-missing" in records["missing"].error
    choice = choose_backend(_Source(gguf=False), "auto", host)
    assert choice.name == "fast" and "prefers this source" in choice.reason
    with pytest.raises(BackendError, match="backend 'missing' cannot run here: module\\(s\\) adaptrix_no_such_module"):
        choose_backend(_Source(gguf=False), "missing", host)


def test_a_backend_name_taken_twice_is_shadowed_and_a_broken_hook_skipped():
    from adaptrix import hookimpl

    class Dup(Backend):
        name = "transformers"

        def load(self, source, options, host):  # pragma: no cover
            raise AssertionError

    class DupPlugin:
        @hookimpl
        def backends(self):
            return [Dup()]

    class Broken:
        @hookimpl
        def backends(self):
            raise RuntimeError("boom")

    records = backend_records(_host(DupPlugin()))
    assert [r.status for r in records if r.name == "transformers"] == ["ok", "shadowed"]
    with pytest.raises(PluginError, match="raised in hook backends: RuntimeError: boom"):
        backend_records(_host(Broken()))  # strict mode: an error
    with pytest.warns(UserWarning, match="boom"):
        lenient = backend_records(_host(Broken(), strict=False))
    assert lenient[0].name == "transformers"


@pytest.mark.skipif("llamacpp" not in _installed(), reason="adaptrix-llamacpp is not installed")
def test_the_llamacpp_path_imports_no_torch_or_transformers(embedded_gguf):
    """`adaptrix generate` on the embedded GGUF through llama.cpp, in a fresh process: no torch, no transformers."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "adaptrix", "generate", "--backend", "llamacpp", "-n", "4",
         "--temperature", "0", "Hi"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    heavy = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "import time:" in line}
    assert not heavy & {"torch", "transformers", "peft"}
    assert out.stdout.strip()


def test_the_core_names_no_backend_plugin():
    """The core knows no backend but its own: no core module names a plugin that provides one (install hints
    included; an error says "install the plugin that provides ..." instead)."""
    repo = Path(__file__).resolve().parents[1]
    providers = [d.name for d in (repo / "plugins").iterdir()
                 if any(re.search(r"def (backends|adapter_converters)\(", f.read_text()) for f in d.rglob("*.py"))]
    assert "adaptrix-llamacpp" in providers
    names = re.compile("|".join(re.escape(n) for p in providers for n in (p, p.replace("-", "_"))))
    offenders = [f"{f.relative_to(repo)}:{i}: {line.strip()}" for f in sorted((repo / "core").rglob("*.py"))
                 for i, line in enumerate(f.read_text().splitlines(), 1) if names.search(line)]
    assert not offenders, "\n".join(offenders)
