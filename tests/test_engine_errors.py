"""Bad models and devices: each a clear error naming what is wrong; the engine goes on working."""

from __future__ import annotations

import json
import shutil

import pytest

from adaptrix import Engine
from adaptrix.errors import (
    DeviceError,
    ModelConfigError,
    ModelLoadError,
    NotACausalLMError,
    PluginUnavailableError,
    RemoteCodeError,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def working(tiny_model):
    engine = Engine(str(tiny_model("llama")), progress=False)
    engine.initialize()
    yield engine
    engine.cleanup()


@pytest.fixture
def still_works(working):
    expected = working.generate("Hi", temperature=0, max_new_tokens=4)
    yield
    assert working.generate("Hi", temperature=0, max_new_tokens=4) == expected
    fresh = Engine(working.model_id, progress=False)  # loading still works too
    fresh.initialize()
    assert fresh.generate("Hi", temperature=0, max_new_tokens=4) == expected
    fresh.cleanup()


def failing(model_id, exc, match, **kwargs):
    engine = Engine(str(model_id), progress=False, **kwargs)
    with pytest.raises(exc, match=match) as info:
        engine.initialize()
    assert not engine.is_initialized
    return info.value


def test_folder_without_config(tmp_path, still_works):
    (tmp_path / "model.safetensors").write_bytes(b"")
    failing(tmp_path, ModelConfigError, rf"{tmp_path} has no config\.json")


def test_missing_path(tmp_path, still_works):
    failing(tmp_path / "nope", ModelConfigError, "does not exist")


def test_bert_is_not_generative(tmp_path, still_works):
    cfg = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 32}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    failing(tmp_path, NotACausalLMError, r"BertForMaskedLM.*not a causal language model")


@pytest.mark.parametrize(
    "device, match",
    [("tpu", r"unknown device 'tpu'; use cpu, cuda, cuda:N, mps or auto"), ("cuda", "no CUDA GPU"),
     ("cuda:3", "no CUDA GPU"), ("mps", "MPS is not available")],
)
def test_unavailable_device(tiny_model, device, match, still_works):
    failing(tiny_model("llama"), DeviceError, match, device=device)


def test_unknown_dtype(tiny_model, still_works):
    failing(tiny_model("llama"), DeviceError, "unknown dtype 'float7'", dtype="float7")


def test_corrupt_safetensors(tiny_model, tmp_path, still_works):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model("llama"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = failing(folder, ModelLoadError, r"model\.safetensors")
    assert "corrupt or truncated" in str(err)


def test_corrupt_gguf(tmp_path, monkeypatch, still_works):
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 100)
    failing(bad, ModelLoadError, r"model\.gguf is not a GGUF file.*re-download")
    assert not list((tmp_path / "cache").glob("gguf/*/config.json"))  # nothing half-written


def test_truncated_gguf(tmp_path, monkeypatch, still_works):
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    failing(bad, ModelLoadError, r"cut\.gguf is not a readable GGUF file.*corrupt or truncated")
    assert not list((tmp_path / "cache").glob("gguf/*/"))  # nothing converted, nothing half-written


def test_remote_code_refused(tmp_path, still_works):
    cfg = {
        "model_type": "my_custom_lm",
        "architectures": ["MyCustomForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_custom.MyCustomForCausalLM"},
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    err = failing(tmp_path, RemoteCodeError, "trust_remote_code=True")
    assert "my_custom_lm" in str(err) and "auto_map" in str(err)


def test_unknown_family_override(tiny_model, still_works):
    failing(tiny_model("llama"), PluginUnavailableError, "no installed plugin provides family 'falcon'", family="falcon")
