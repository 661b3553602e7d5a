"""A Mistral model converted to GGUF (``general.architecture = llama``) is family mistral on every backend.

llama.cpp writes Mistral checkpoints as GGUF ``llama``; only ``general.name``
says Mistral. The GGUF header mapping (``adaptrix.models.modelconfig.gguf_config``)
decides the model type once: ``adaptrix detect``, the llama.cpp backend and
the transformers backend (whose converted folder is saved under that type)
all report it, while a real llama GGUF stays llama.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from adaptrix.models.source import resolve_source
from adaptrix.plugins.host import get_host
from support.gguf import write_gguf

TOKENS = [5, 40, 77, 120, 300, 12, 99, 3]


@pytest.fixture(scope="module")
def tiny_mistral_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    from support.tiny_gguf import build_tiny_gguf

    return build_tiny_gguf("mistral", tmp_path_factory.mktemp("gguf-mistral"))  # general.name "tiny-mistral"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("arch", "name", "family", "model_type"),
    [
        ("llama", "Mistral 7B Instruct v0.3", "mistral", "mistral"),
        ("llama", "mistral", "mistral", "mistral"),
        ("llama", "OpenHermes 2.5 Mistral 7B", "mistral", "mistral"),
        ("llama", "Ministral 8B Instruct 2410", "mistral", "mistral"),
        ("llama", "Meta Llama 3.1 8B Instruct", "llama", "llama"),
        ("llama", "SmolLM2 135M Instruct", "llama", "llama"),
        ("qwen3", "Qwen3 Mistral Merge", "qwen", "qwen3"),  # only a llama GGUF can be a Mistral in disguise
    ],
)
def test_gguf_header_name_decides_mistral(tmp_path, cache, arch, name, family, model_type):
    src = resolve_source(str(write_gguf(tmp_path / "m.gguf", arch=arch, name=name)), host=get_host())
    assert (src.family, src.config["model_type"], src.config["gguf_architecture"]) == (family, model_type, arch)


def test_a_mixtral_gguf_is_mixtral(tmp_path, cache):
    gguf = pytest.importorskip("gguf")

    w = gguf.GGUFWriter(str(tmp_path / "mixtral.gguf"), "llama")
    w.add_name("Mixtral 8x7B Instruct v0.1")
    w.add_expert_count(8)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    src = resolve_source(str(tmp_path / "mixtral.gguf"), host=get_host())
    assert (src.family, src.config["model_type"]) == ("mistral", "mixtral")


def test_detect_says_mistral(tiny_mistral_gguf, capsys):
    from adaptrix.cli.main import main

    assert main(["detect", str(tiny_mistral_gguf[1]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["family"], out["model_type"]) == ("mistral", "mistral")


def test_the_embedded_llama_gguf_stays_llama(embedded_gguf, cache):
    src = resolve_source(str(embedded_gguf), host=get_host())
    assert (src.family, src.config["model_type"]) == ("llama", "llama")


def test_transformers_backend_runs_a_mistral_gguf_as_mistral(tiny_mistral_gguf, cache, one_thread):
    import torch
    from transformers import AutoModelForCausalLM

    from adaptrix import Engine

    hf, gguf_path = tiny_mistral_gguf
    e = Engine(str(gguf_path), backend="transformers", progress=False)
    e.initialize()
    try:
        info = e.get_model_info()
        assert (info["family"], info["model_type"], info["architecture"]) == ("mistral", "mistral", "MistralForCausalLM")
        assert e.model.config.sliding_window is None  # llama.cpp's llama graph attends to the whole context
        source = AutoModelForCausalLM.from_pretrained(hf).eval()  # the checkpoint the GGUF was written from
        with torch.no_grad():
            got, want = (m(torch.tensor([TOKENS])).logits[0].numpy() for m in (e.model, source))
        np.testing.assert_allclose(got, want, atol=1e-5)
    finally:
        e.cleanup()


def test_llamacpp_backend_reports_the_same(tiny_mistral_gguf, cache):
    pytest.importorskip("adaptrix_llamacpp")
    pytest.importorskip("llama_cpp")
    from adaptrix import Engine

    e = Engine(str(tiny_mistral_gguf[1]), backend="llamacpp", threads=1, progress=False)
    e.initialize()
    try:
        info = e.get_model_info()
        assert (info["backend"], info["family"], info["model_type"]) == ("llamacpp", "mistral", "mistral")
    finally:
        e.cleanup()
