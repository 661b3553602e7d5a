"""One resolved model source (``adaptrix.models.source``): engine, training, detect and adapter validation agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adaptrix.errors import ModelConfigError, PluginUnavailableError
from adaptrix.models import gguf_cache
from adaptrix.models.source import resolve_source
from adaptrix.plugins.host import get_host
from support.gguf import FakeConverter, write_gguf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ADAPTRIX_CACHE", str(root))
    return root


@pytest.fixture
def gguf_of_tiny_llama(cache, tmp_path, tiny_model, monkeypatch):
    """A GGUF file whose (fake) conversion is the tiny llama model; returns (path, converter)."""
    conv = FakeConverter(source=tiny_model("llama"))
    monkeypatch.setattr(gguf_cache, "convert_with_transformers", conv)
    return write_gguf(tmp_path / "tiny.gguf", payload=b"w" * 64), conv


def test_gguf_resolves_from_its_header_without_torch_or_conversion(tmp_path, cache):
    f = write_gguf(tmp_path / "m.gguf", arch="qwen3")
    code = (
        "import sys, json\nfrom adaptrix.models.source import resolve_source\nfrom adaptrix.plugins.host import get_host\n"
        f"s = resolve_source({str(f)!r}, host=get_host())\n"
        "print(json.dumps([s.family, s.path, str(s.gguf_file), s.config['model_type'], s.config_source, "
        "s.backend, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    family, path, gguf, model_type, config_source, backend, heavy = json.loads(out.strip().splitlines()[-1])
    assert (family, path, gguf, model_type, config_source) == ("qwen", None, str(f), "qwen3", str(f))
    assert backend is None and heavy == []
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())  # nothing converted


def test_ensure_folder_converts_once_and_reads_the_full_config(gguf_of_tiny_llama, tiny_model):
    f, conv = gguf_of_tiny_llama
    src = resolve_source(str(f), host=get_host())
    assert src.path is None and conv.calls == 0
    ready = src.ensure_folder(progress=False)
    assert conv.calls == 1 and ready.cache.converted
    assert ready.config == json.loads((tiny_model("llama") / "config.json").read_text())
    assert ready.family == src.family == "llama" and ready.path == str(ready.cache.folder)
    assert src.ensure_folder(progress=False).path == ready.path and conv.calls == 1
    assert ready.ensure_folder() is ready  # a folder source needs nothing more


def test_folder_and_config_file_and_base_id(tiny_model):
    folder = tiny_model("qwen3")
    for given in (str(folder), str(folder / "config.json")):
        src = resolve_source(given, host=get_host())
        assert src.path == str(folder) and src.family == "qwen" and src.gguf_file is None
        assert src.config_source == str(folder / "config.json") and src.base_model_id == given


def test_default_model_records_its_hub_id():
    from adaptrix.models.default_model import HUB_ID, default_model_path

    try:
        path = default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))
    src = resolve_source(None, host=get_host())
    assert src.requested is None and src.model_id == str(path) and src.gguf_file == path
    assert src.base_model_id == HUB_ID and src.family == "llama"
    assert resolve_source(str(path), host=get_host()).base_model_id == HUB_ID


def test_bad_sources(tmp_path):
    with pytest.raises(ModelConfigError, match="names no model"):
        resolve_source("", host=get_host())
    two = tmp_path / "two"
    two.mkdir()
    write_gguf(two / "a.gguf")
    write_gguf(two / "b.gguf")
    with pytest.raises(ModelConfigError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\).*pass the \.gguf file"):
        resolve_source(str(two), host=get_host())
    with pytest.raises(ModelConfigError, match="does not exist"):
        resolve_source(str(tmp_path / "nope.gguf"), host=get_host())
    with pytest.raises(PluginUnavailableError, match="no installed plugin provides family 'nofamily'"):
        resolve_source(str(write_gguf(tmp_path / "m.gguf")), family="nofamily", host=get_host())


def test_engine_reads_config_json_once(tiny_model, monkeypatch):
    from adaptrix import Engine
    from adaptrix.models import modelconfig

    reads = []
    real = modelconfig.read_json_object

    def counting(path, *a, **k):
        if path.name == "config.json":
            reads.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(modelconfig, "read_json_object", counting)
    engine = Engine(str(tiny_model("llama")), progress=False)
    engine.initialize()
    try:
        assert len(reads) == 1, reads
        assert engine.get_model_info()["source"] == str(tiny_model("llama"))
    finally:
        engine.cleanup()


def test_adapter_validation_on_a_gguf(gguf_of_tiny_llama, tiny_model, tmp_path, capsys):
    """`adapters validate/list --model x.gguf` answer from the GGUF's cached config, as for its folder."""
    from adaptrix.cli.main import main
    from support.adapters import make_adapter

    f, conv = gguf_of_tiny_llama
    resolve_source(str(f), host=get_host()).ensure_folder(progress=False)
    root = tmp_path / "adapters"
    make_adapter(tiny_model("llama"), root / "fits", seed=1)
    make_adapter(tiny_model("qwen3"), root / "other", seed=2)
    assert main(["adapters", "validate", str(root / "fits"), "--model", str(f)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fits: compatible") and f"with {f}" in out and "error:" not in out
    assert main(["adapters", "validate", str(root / "other"), "--model", str(f)]) == 1
    assert "family 'qwen'" in capsys.readouterr().out
    assert main(["adapters", "list", "--adapters-dir", str(root), "--model", str(f), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fits"]["report"]["ok"] is True and rows["other"]["report"]["ok"] is False
    assert conv.calls == 1
