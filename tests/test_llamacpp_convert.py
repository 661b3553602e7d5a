"""PEFT <-> GGUF LoRA conversion, checked against transformers+peft and raw llama.cpp.

Tiny float32 GGUF models are written per architecture (``support.tiny_gguf``);
transformers loading that GGUF must reproduce the source model's logits
exactly, llama.cpp must agree with transformers within ``BASE_TOL``, and a
converted LoRA applied in llama.cpp must agree with peft within ``LORA_TOL``
while moving the logits by far more than that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("adaptrix_llamacpp")

from adaptrix.errors import AdapterFormatError, AdapterIncompatibleError  # noqa: E402
from adaptrix_llamacpp.convert import gguf_lora_to_peft, peft_to_gguf_lora  # noqa: E402
from adaptrix_llamacpp.gguf_arch import SUPPORTED_ARCHITECTURES  # noqa: E402
from support.adapters import build_variant, make_adapter  # noqa: E402
from support.tiny_gguf import build_tiny_gguf  # noqa: E402

#: The converter's architectures, as the transformers model types the tiny models are built from.
ARCHS = ["llama", "qwen2", "qwen3"]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENS = [5, 40, 77, 120, 300, 12, 99, 3, 250, 61]
#: llama.cpp (f16 KV cache, its own kernels) vs transformers float32, logits of magnitude ~4-5.
BASE_TOL = 2e-2
LORA_TOL = 5e-2


def test_every_supported_architecture_is_tested():
    from adaptrix_llamacpp.gguf_arch import gguf_arch_for_model_type

    assert {gguf_arch_for_model_type(t) for t in ARCHS} == set(SUPPORTED_ARCHITECTURES)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """``tiny_gguf(model_type) -> (hf_folder, gguf_path)``, one per architecture per session."""
    cache: dict[str, tuple[Path, Path]] = {}

    def make(model_type: str):
        if model_type not in cache:
            cache[model_type] = build_tiny_gguf(model_type, tmp_path_factory.mktemp(f"gguf-{model_type}"))
        return cache[model_type]

    return make


@pytest.fixture(scope="session")
def tiny_adapter(tiny_gguf, tmp_path_factory):
    """``tiny_adapter(model_type) -> folder``: a random all-linear LoRA (nonzero B) per architecture."""
    cache: dict[str, Path] = {}

    def make(model_type: str):
        if model_type not in cache:
            hf, _ = tiny_gguf(model_type)
            cache[model_type] = make_adapter(
                hf, tmp_path_factory.mktemp(f"lora-{model_type}") / "ad", target_modules=ALL_LINEAR
            )
        return cache[model_type]

    return make


def _hf_logits(model, tokens=TOKENS) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def _gguf_in_transformers(gguf_path: Path, model_type: str):
    from transformers import AutoModelForCausalLM

    # transformers' GGUF reader ignores qwen3's attention.key_length and assumes head_dim 128.
    extra = {"head_dim": 8} if model_type == "qwen3" else {}
    return AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, **extra).eval()


@pytest.fixture(scope="module")
def raw_llama():
    pytest.importorskip("llama_cpp")
    from support.llamacpp import RawLlama

    opened = []

    def make(path: Path, **kw):
        r = RawLlama(path, **kw)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


# -- the tiny GGUF models themselves -------------------------------------------


@pytest.mark.parametrize("model_type", ARCHS)
def test_tiny_gguf_loads_in_transformers_with_the_source_logits(tiny_gguf, model_type, one_thread):
    from transformers import AutoModelForCausalLM

    hf, gguf_path = tiny_gguf(model_type)
    source = _hf_logits(AutoModelForCausalLM.from_pretrained(hf).eval())
    loaded = _hf_logits(_gguf_in_transformers(gguf_path, model_type))
    np.testing.assert_allclose(loaded, source, atol=1e-5)


@pytest.mark.parametrize("model_type", ARCHS)
def test_llama_cpp_logits_agree_with_transformers(tiny_gguf, model_type, raw_llama, one_thread):
    _, gguf_path = tiny_gguf(model_type)
    expected = _hf_logits(_gguf_in_transformers(gguf_path, model_type))
    got = raw_llama(gguf_path).logits(TOKENS)
    assert np.abs(got - expected).max() < BASE_TOL


# -- validation from the GGUF header -------------------------------------------


@pytest.mark.parametrize("model_type", ARCHS)
def test_gguf_module_index_matches_the_transformers_model(tiny_gguf, model_type):
    from transformers import AutoModelForCausalLM

    from adaptrix.adapters.validate import ModuleIndex
    from adaptrix_llamacpp.gguf_index import module_index, read_gguf_model

    hf, gguf_path = tiny_gguf(model_type)
    want = ModuleIndex.from_model(AutoModelForCausalLM.from_pretrained(hf))
    got = module_index(read_gguf_model(gguf_path))
    linear = lambda ix: {n: (s.in_features, s.out_features) for n, s in ix.modules.items() if s.kind != "other"}  # noqa: E731
    assert linear(got) == linear(want)
    assert got.linear_leaves == want.linear_leaves
    assert (got.vocab_size, got.output_name) == (want.vocab_size, want.output_name)


def test_wrong_shape_adapter_is_refused_with_the_transformers_report(tiny_gguf, tmp_path):
    from adaptrix.adapters.validate import validate_for_model
    from adaptrix.plugins.host import get_host

    hf, gguf_path = tiny_gguf("llama")
    other = build_variant(hf, tmp_path / "wide", hidden_size=48)
    adapter = make_adapter(other, tmp_path / "wide-ad", base_model=str(hf))
    out = tmp_path / "never.gguf"
    with pytest.raises(AdapterIncompatibleError) as err:
        peft_to_gguf_lora(adapter, gguf_path, out, progress=False)
    today = validate_for_model(str(adapter), str(hf), host=get_host())
    assert not today.ok
    norm = lambda errors, model: [e.replace(model, "MODEL") for e in errors]  # noqa: E731
    assert norm(err.value.report.errors, str(gguf_path)) == norm(today.errors, str(hf))
    assert "in_features=32" in str(err.value) and not out.exists()


def test_wrong_family_adapter_is_refused_before_work(tiny_gguf, tiny_adapter, tmp_path):
    _, llama_gguf = tiny_gguf("llama")
    qwen_adapter = tiny_adapter("qwen2")  # same shapes, other family
    with pytest.raises(AdapterIncompatibleError, match="family 'qwen'.*family 'llama'"):
        peft_to_gguf_lora(qwen_adapter, llama_gguf, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(
    "kwargs, refusal",
    [
        (dict(modules_to_save=["lm_head"]),
         "modules_to_save=['lm_head'] replaces whole modules, which a GGUF LoRA cannot carry; run it on the "
         "transformers backend, or retrain without modules_to_save"),
        (dict(use_dora=True),
         "use_dora=True (DoRA) has no GGUF LoRA form; merge it into the base with peft (merge_and_unload) and "
         "convert that model, or run it on the transformers backend"),
        (dict(target_modules=("q_proj", "embed_tokens")),
         "LoRA on embedding layers (base_model.model.model.embed_tokens.lora_embedding_A ...) is not converted "
         "to GGUF; retrain without the embedding in target_modules, or run it on the transformers backend"),
    ],
)
def test_adapters_a_gguf_lora_cannot_express_are_refused(tiny_gguf, tmp_path, kwargs, refusal):
    """Each refusal names the adapter and the field at fault and says what to do; no other GGUF refusal joins it."""
    hf, gguf_path = tiny_gguf("llama")
    adapter = make_adapter(hf, tmp_path / "ad", **kwargs)
    with pytest.raises(AdapterIncompatibleError) as err:
        peft_to_gguf_lora(adapter, gguf_path, tmp_path / "x.gguf", progress=False)
    assert [e for e in err.value.report.errors if "GGUF" in e] == [f"adapter 'ad': {refusal}"]
    assert f"  - adapter 'ad': {refusal}\n" in str(err.value)
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_is_refused_naming_it(tiny_adapter, tmp_path):
    from support.tiny_gguf import write_falcon_stub

    path = write_falcon_stub(tmp_path / "falcon.gguf")
    with pytest.raises(AdapterIncompatibleError, match=r"architecture 'falcon'.*supports llama, qwen2, qwen3"):
        peft_to_gguf_lora(tiny_adapter("llama"), path, tmp_path / "x.gguf", progress=False)


# -- the converted adapter on llama.cpp vs transformers+peft -------------------


@pytest.mark.parametrize("model_type", ARCHS)
def test_converted_lora_on_llama_cpp_matches_peft(tiny_gguf, tiny_adapter, model_type, raw_llama, tmp_path, one_thread):
    from peft import PeftModel

    _, gguf_path = tiny_gguf(model_type)
    adapter = tiny_adapter(model_type)
    lora = peft_to_gguf_lora(adapter, gguf_path, tmp_path / "lora.gguf", progress=False)
    base_model = _gguf_in_transformers(gguf_path, model_type)
    base = _hf_logits(base_model)
    tuned = _hf_logits(PeftModel.from_pretrained(base_model, adapter).eval())
    assert np.abs(tuned - base).max() > 20 * LORA_TOL  # the adapter visibly changes the output

    llm = raw_llama(gguf_path)
    handle = llm.load_adapter(lora)
    llm.set_adapters([(handle, 1.0)])
    assert np.abs(llm.logits(TOKENS) - tuned).max() < LORA_TOL
    llm.set_adapters([(handle, 0.0)])
    assert np.abs(llm.logits(TOKENS) - base).max() < BASE_TOL
    llm.set_adapters([(handle, 1.0)])
    llm.set_adapters([])
    assert np.abs(llm.logits(TOKENS) - base).max() < BASE_TOL


def test_rslora_and_rank_pattern_scales_are_folded_into_b(tiny_gguf, raw_llama, tmp_path, one_thread):
    from peft import PeftModel

    hf, gguf_path = tiny_gguf("qwen2")
    adapter = make_adapter(
        hf, tmp_path / "ad", r=4, alpha=6, use_rslora=True, target_modules=("q_proj", "v_proj", "down_proj"),
        rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3},
    )
    lora = peft_to_gguf_lora(adapter, gguf_path, tmp_path / "lora.gguf", progress=False)
    base_model = _gguf_in_transformers(gguf_path, "qwen2")
    tuned = _hf_logits(PeftModel.from_pretrained(base_model, adapter).eval())
    llm = raw_llama(gguf_path)
    llm.set_adapters([(llm.load_adapter(lora), 1.0)])
    assert np.abs(llm.logits(TOKENS) - tuned).max() < LORA_TOL


# -- round trips and foreign files ---------------------------------------------


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("model_type", ARCHS)
def test_peft_gguf_peft_round_trip_gives_the_same_tensors(tiny_gguf, tiny_adapter, model_type, tmp_path, one_thread):
    from peft import PeftModel

    _, gguf_path = tiny_gguf(model_type)
    adapter = tiny_adapter(model_type)
    lora = peft_to_gguf_lora(adapter, gguf_path, tmp_path / "lora.gguf", progress=False)
    back = gguf_lora_to_peft(lora, tmp_path / "back", progress=False)
    before, after = _tensors(adapter), _tensors(back)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    # peft loads the converted folder and computes what the original computes
    model = _gguf_in_transformers(gguf_path, model_type)
    original = _hf_logits(PeftModel.from_pretrained(model, adapter).eval())
    model = _gguf_in_transformers(gguf_path, model_type)
    np.testing.assert_allclose(_hf_logits(PeftModel.from_pretrained(model, back).eval()), original, atol=1e-5)


def test_float16_gguf_lora_round_trips_within_half_precision(tiny_gguf, tiny_adapter, tmp_path):
    _, gguf_path = tiny_gguf("llama")
    adapter = tiny_adapter("llama")
    lora = peft_to_gguf_lora(adapter, gguf_path, tmp_path / "lora16.gguf", progress=False, dtype="f16")
    before, after = _tensors(adapter), _tensors(gguf_lora_to_peft(lora, tmp_path / "back", progress=False))
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-3, atol=1e-4)


def _strip_adaptrix_keys(src: Path, dst: Path) -> Path:
    """Rewrite a GGUF LoRA the way llama.cpp's convert_lora_to_gguf.py writes one: no adaptrix.* keys."""
    import gguf

    reader = gguf.GGUFReader(str(src), "r")
    w = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(reader.fields["adapter.lora.alpha"].contents()))
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data).reshape(tuple(reversed([int(d) for d in t.shape]))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_llama_cpp_style_lora_file_converts_back_with_its_base(tiny_gguf, tiny_adapter, raw_llama, tmp_path):
    _, gguf_path = tiny_gguf("llama")
    adapter = tiny_adapter("llama")
    ours = peft_to_gguf_lora(adapter, gguf_path, tmp_path / "ours.gguf", progress=False)
    foreign = _strip_adaptrix_keys(ours, tmp_path / "foreign.gguf")
    llm = raw_llama(gguf_path)
    llm.set_adapters([(llm.load_adapter(foreign), 1.0)])  # llama.cpp accepts it as it is
    with pytest.raises(AdapterFormatError, match="base_gguf="):
        gguf_lora_to_peft(foreign, tmp_path / "nobase", progress=False)
    back = gguf_lora_to_peft(foreign, tmp_path / "back", base_gguf=gguf_path, progress=False)
    before, after = _tensors(adapter), _tensors(back)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    cfg = json.loads((back / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (4, 8.0, "LORA")


def test_a_model_gguf_is_not_taken_for_a_lora(tiny_gguf, tmp_path):
    _, gguf_path = tiny_gguf("llama")
    with pytest.raises(AdapterFormatError, match="not a GGUF LoRA"):
        gguf_lora_to_peft(gguf_path, tmp_path / "x", progress=False)


# -- cache ------------------------------------------------------------------------


def test_cached_lora_converts_once_and_again_after_an_edit(tiny_gguf, tmp_path, monkeypatch):
    import adaptrix_llamacpp.convert as conv
    import adaptrix_llamacpp.lora_cache as lc

    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    hf, gguf_path = tiny_gguf("llama")
    adapter = make_adapter(hf, tmp_path / "ad")
    calls = []
    real = conv.peft_to_gguf_lora
    monkeypatch.setattr(conv, "peft_to_gguf_lora", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = lc.cached_lora(adapter, gguf_path, progress=False)
    assert first.parent == tmp_path / "cache" / "lora" and first.is_file()
    assert lc.cached_lora(adapter, gguf_path, progress=False) == first and len(calls) == 1
    make_adapter(hf, adapter, seed=7)  # new weights, same folder
    second = lc.cached_lora(adapter, gguf_path, progress=False)
    assert second != first and len(calls) == 2
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name])  # no temp leftovers


# -- no torch ------------------------------------------------------------------------


def test_conversion_imports_no_torch(tiny_gguf, tiny_adapter, tmp_path):
    _, gguf_path = tiny_gguf("llama")
    adapter = tiny_adapter("llama")
    code = (
        "import sys; from adaptrix_llamacpp.lora_cache import cached_lora\n"
        f"cached_lora({str(adapter)!r}, {str(gguf_path)!r}, progress=False)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    env = {**os.environ, "ADAPTRIX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "gguf" in imported and "torch" not in imported and "transformers" not in imported


# -- the embedded model ----------------------------------------------------------------


def test_math_specialist_on_llama_cpp_answers_like_transformers(raw_llama, tmp_path):
    from adaptrix.errors import ModelConfigError
    from adaptrix.models.default_model import default_model_path

    try:
        gguf_path = default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))
    adapter = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "math_specialist"
    # float16, llama.cpp's own converter default. The final "1"/"2" in "160 + 40 = 200" is a 0.4-logit
    # call (of ~41) on llama.cpp's Q4_1 kernels without AMX: it flips with dtype and thread count, so
    # only the adapter's worked steps (which transformers+peft produces too) are asserted, not the sum.
    lora = peft_to_gguf_lora(adapter, gguf_path, tmp_path / "math.gguf", progress=False, dtype="f16")
    llm = raw_llama(gguf_path, n_ctx=512, threads=2)
    prompt = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 25 times 8?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = llm.tokenize(prompt)
    llm.set_adapters([(llm.load_adapter(lora), 1.0)])
    answer = llm.detokenize(llm.greedy(ids, 48, llm.eos_ids()))
    assert answer.startswith("25 × 8 = 20 × 8 + 5 × 8 = 160 + 40 = "), answer
    assert " The answer is " in answer, answer
