"""LlamaRuntime on the embedded SmolLM2 GGUF, against raw llama-cpp-python and the GGUF file itself."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from adaptrix.errors import (
    AdapterError,
    AdapterFormatError,
    ContextOverflowError,
    EngineStateError,
    GenerationError,
    ModelLoadError,
)

pytest.importorskip("llama_cpp")
from adaptrix_llamacpp.runtime import LlamaRuntime  # noqa: E402
from support.llamacpp import RawLlama, write_random_lora  # noqa: E402

N_CTX, THREADS = 512, 1
PROMPTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName three colours.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "Once upon a time",
]


@pytest.fixture(scope="module")
def rt(embedded_gguf):
    runtime = LlamaRuntime(embedded_gguf, n_ctx=N_CTX, n_threads=THREADS)
    yield runtime
    runtime.close()


def _run(gen):
    """All tokens of a generate_tokens generator, and its finish reason."""
    out = []
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return out, stop.value


def test_greedy_tokens_equal_raw_llama_cpp_python(rt, embedded_gguf):
    with RawLlama(embedded_gguf, n_ctx=N_CTX, threads=THREADS) as llama:
        for text in PROMPTS:
            ids = rt.tokenize(text, add_special=False)
            assert ids == llama.tokenize(text, special=True)
            want = llama.greedy(ids, 40)
            got, _ = _run(rt.generate_tokens(ids, max_new_tokens=40))
            assert got == want, text
            assert len(want) >= 5


def test_logits_equal_raw_llama_cpp_python(rt, embedded_gguf):
    import numpy as np

    ids = rt.tokenize(PROMPTS[0], add_special=False)
    with RawLlama(embedded_gguf, n_ctx=N_CTX, threads=THREADS) as llama:
        want = llama.logits(ids)
    every = rt.logits(ids, all_positions=True)
    assert every.shape == (len(ids), rt.n_vocab)
    np.testing.assert_allclose(every, want, rtol=0, atol=1e-3)
    last = rt.logits(ids)
    np.testing.assert_allclose(last, every[-1], rtol=0, atol=1e-3)
    first, _ = _run(rt.generate_tokens(ids, max_new_tokens=1))
    assert first == [int(last.argmax())]


def test_seeded_sampling_repeats_and_seeds_differ(rt):
    ids = rt.tokenize(PROMPTS[2], add_special=False)
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50, stop_ids=())
    a, _ = _run(rt.generate_tokens(ids, seed=7, **kw))
    b, _ = _run(rt.generate_tokens(ids, seed=7, **kw))
    c, _ = _run(rt.generate_tokens(ids, seed=8, **kw))
    assert a == b and len(a) == 24
    assert a != c
    greedy, _ = _run(rt.generate_tokens(ids, max_new_tokens=24, stop_ids=()))
    assert a != greedy  # temperature 1 really samples


def test_repetition_penalty_follows_the_transformers_rule(rt):
    import numpy as np

    penalty, changed = 3.0, 0
    for text in ("1, 2, 3, 1, 2, 3, 1, 2,", "the cat and the cat and the", PROMPTS[0]):
        ids = rt.tokenize(text, add_special=False)
        logits = rt.logits(ids)
        want = logits.copy()
        seen = np.array(sorted(set(ids)))
        want[seen] = np.where(want[seen] > 0, want[seen] / penalty, want[seen] * penalty)
        got, _ = _run(rt.generate_tokens(ids, max_new_tokens=1, repetition_penalty=penalty))
        assert got == [int(want.argmax())], text
        changed += int(want.argmax()) != int(logits.argmax())
    assert changed  # at least one prompt where the penalty changes the answer


def test_stops_lengths_and_cancel(rt):
    ids = rt.tokenize(PROMPTS[0], add_special=False)
    full, why = _run(rt.generate_tokens(ids, max_new_tokens=64))
    assert why == "stop" and 0 < len(full) < 64  # ends at <|im_end|>, not yielded
    assert rt.special.eos not in full
    capped, why = _run(rt.generate_tokens(ids, max_new_tokens=3))
    assert (capped, why) == (full[:3], "length")
    cut, why = _run(rt.generate_tokens(ids, max_new_tokens=64, stop_ids={full[2]}))
    assert (cut, why) == (full[:2], "stop")
    calls = []
    cancelled, why = _run(rt.generate_tokens(ids, max_new_tokens=64, cancel=lambda: calls.append(1) or len(calls) > 3))
    assert (cancelled, why) == (full[:3], "cancelled")
    # The cache was cleared: the same call gives the same answer after all that.
    assert _run(rt.generate_tokens(ids, max_new_tokens=64))[0] == full


def test_generation_stops_at_the_end_of_the_context(embedded_gguf):
    with LlamaRuntime(embedded_gguf, n_ctx=32, n_threads=THREADS) as small:
        ids = small.tokenize("Once upon a time, there was", add_special=False)
        out, why = _run(small.generate_tokens(ids, max_new_tokens=100, stop_ids=()))
        assert why == "length" and len(ids) + len(out) == 32
        with pytest.raises(ContextOverflowError, match="32"):
            small.generate_tokens(list(range(10, 50)), max_new_tokens=1)


def test_bad_arguments_are_clear_errors(rt):
    ids = rt.tokenize("hi", add_special=False)
    for kw, match in [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ]:
        with pytest.raises(GenerationError, match=match):
            rt.generate_tokens(ids, **{"max_new_tokens": 4, **kw})
    with pytest.raises(GenerationError, match="no tokens"):
        rt.generate_tokens([], max_new_tokens=4)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        rt.generate_tokens([rt.n_vocab], max_new_tokens=4)


def test_one_generation_at_a_time(rt):
    ids = rt.tokenize("hi", add_special=False)
    first = rt.generate_tokens(ids, max_new_tokens=8, stop_ids=())
    next(first)
    with pytest.raises(EngineStateError, match="already running"):
        next(rt.generate_tokens(ids, max_new_tokens=8))
    first.close()
    assert len(_run(rt.generate_tokens(ids, max_new_tokens=2, stop_ids=()))[0]) == 2


def test_metadata_and_special_tokens_match_the_gguf_file(rt, embedded_gguf):
    import gguf

    fields = gguf.GGUFReader(str(embedded_gguf)).fields

    def value(key):
        f = fields[key]
        return bytes(f.parts[-1]).decode() if f.types[0] == gguf.GGUFValueType.STRING else int(f.parts[-1][0])

    info = rt.info
    assert info.architecture == value("general.architecture") == "llama"
    assert info.name == value("general.name")
    assert info.context_length == value("llama.context_length")
    assert info.chat_template == value("tokenizer.chat_template")
    sp = rt.special
    assert (sp.bos, sp.eos) == (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id"))
    assert rt.token_text(sp.eos) == "<|im_end|>" and sp.eos in sp.eog and rt.token_id("<|im_end|>") == sp.eos
    assert rt.metadata("no.such.key") is None


def test_pieces_join_to_the_detokenized_text(rt):
    text = "Héllo wörld ✓ 你好 🙂 <|im_end|>"
    ids = rt.tokenize(text, add_special=False)
    assert b"".join(rt.token_piece(t) for t in ids).decode("utf-8") == text == rt.detokenize(ids)
    assert rt.token_piece(rt.special.eos, special=False) == b""
    multi = [t for t in ids if len(rt.token_piece(t)) and not _whole_utf8(rt.token_piece(t))]
    assert multi  # some tokens carry part of a character: why callers must join bytes before decoding


def _whole_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_threads_can_be_changed(rt):
    rt.set_threads(2)
    assert rt.n_threads == 2
    rt.set_threads(THREADS)
    assert rt.n_threads == THREADS
    with pytest.raises(GenerationError):
        rt.set_threads(0)


def test_loading_errors_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LlamaRuntime(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelLoadError, match=r"junk\.gguf"):
        LlamaRuntime(junk)


def test_close_frees_and_later_use_is_a_clear_error(embedded_gguf):
    runtime = LlamaRuntime(embedded_gguf, n_ctx=64, n_threads=THREADS)
    runtime.close()
    runtime.close()  # idempotent
    assert runtime.closed
    with pytest.raises(EngineStateError, match="closed"):
        runtime.tokenize("hi")
    # Garbage collection frees a runtime nobody closed.
    other = LlamaRuntime(embedded_gguf, n_ctx=64, n_threads=THREADS)
    finalizer = other._finalizer
    del other
    gc.collect()
    assert not finalizer.alive


# ----------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def loras(rt, embedded_gguf, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    a = rt.load_lora(write_random_lora(d / "a.gguf", embedded_gguf, seed=1))
    b = rt.load_lora(write_random_lora(d / "b.gguf", embedded_gguf, seed=2, targets=("attn_k", "ffn_up")))
    yield a, b
    rt.set_loras([])


def test_lora_scales_switch_without_reloading(rt, loras):
    import numpy as np

    a, b = loras
    ids = rt.tokenize(PROMPTS[0], add_special=False)
    rt.set_loras([])
    base = rt.logits(ids)
    rt.set_loras({a: 1.0})
    with_a = rt.logits(ids)
    rt.set_loras({b: 1.0})
    with_b = rt.logits(ids)
    rt.set_loras({a: 1.0, b: 0.5})
    both = rt.logits(ids)
    rt.set_loras({a: 0.0})
    zero = rt.logits(ids)
    rt.set_loras({a: 1.0})
    again = rt.logits(ids)
    rt.set_loras([])
    assert np.abs(with_a - base).max() > 0.05 and np.abs(with_b - base).max() > 0.05
    assert np.abs(both - with_a).max() > 0.05
    np.testing.assert_array_equal(zero, base)  # scale 0 is the base model
    np.testing.assert_array_equal(again, with_a)  # switching back gives exactly the same model
    np.testing.assert_array_equal(rt.logits(ids), base)
    assert a.metadata["adapter.type"] == "lora" and float(a.metadata["adapter.lora.alpha"]) == 4


def test_lora_errors(rt, loras, embedded_gguf, tmp_path):
    a, _ = loras
    with pytest.raises(AdapterError, match="does not exist"):
        rt.load_lora(tmp_path / "none.gguf")
    with pytest.raises(AdapterFormatError, match=r"refused the LoRA .*model\.gguf"):
        rt.load_lora(_copy(embedded_gguf, tmp_path / "model.gguf"))  # a model, not an adapter
    with LlamaRuntime(embedded_gguf, n_ctx=64, n_threads=THREADS) as other:
        with pytest.raises(AdapterError, match="not loaded"):
            other.set_loras({a: 1.0})


def test_unload_deactivates_and_frees(rt, embedded_gguf, tmp_path):
    import numpy as np

    ids = rt.tokenize(PROMPTS[2], add_special=False)
    base = rt.logits(ids)
    c = rt.load_lora(write_random_lora(tmp_path / "c.gguf", embedded_gguf, seed=3))
    rt.set_loras({c: 1.0})
    assert rt.active_loras == ((c, 1.0),)
    rt.unload_lora(c)
    assert rt.active_loras == () and c not in rt.loaded_loras
    np.testing.assert_array_equal(rt.logits(ids), base)
    with pytest.raises(AdapterError, match="not loaded"):
        rt.unload_lora(c)


def test_a_shared_prefix_is_reused_only_with_the_same_adapters(rt, loras, embedded_gguf, tmp_path):
    """A chat turn decodes only what is new: the context keeps the last prompt's keys and values. What comes
    out equals a fresh context's answer (raw llama-cpp-python, reset); a change of adapters or scales, or an
    unloaded adapter, never reuses keys and values computed with other weights."""
    a, _ = loras
    first = rt.tokenize(PROMPTS[1], add_special=False)
    with RawLlama(embedded_gguf, n_ctx=N_CTX, threads=THREADS) as llama:
        rt.set_loras([])
        answer, _ = _run(rt.generate_tokens(first, max_new_tokens=12))
        turn = rt.tokenize(PROMPTS[1] + rt.detokenize(answer) + "<|im_end|>\n<|im_start|>user\nAnd two more?"
                           "<|im_end|>\n<|im_start|>assistant\n", add_special=False)
        assert turn[: len(first)] == first
        got, _ = _run(rt.generate_tokens(turn, max_new_tokens=16))
        assert rt.reused_tokens == len(first)  # the whole first prompt came from the cache, not its answer
        assert got == llama.greedy(turn, 16)
    base, _ = _run(rt.generate_tokens(turn, max_new_tokens=16))
    assert rt.reused_tokens == len(turn) - 2 and base == got  # the same prompt again: its last two tokens
    for scales in ({a: 1.0}, {a: 0.5}):
        rt.set_loras(scales)
        adapted, _ = _run(rt.generate_tokens(turn, max_new_tokens=16))
        assert rt.reused_tokens == 0
        rt.set_loras(scales)
        rt.logits(turn)  # a fresh computation with these weights, the oracle
        again, _ = _run(rt.generate_tokens(turn, max_new_tokens=16))
        assert adapted == again
    rt.set_loras([])
    assert _run(rt.generate_tokens(turn, max_new_tokens=16))[0] == base and rt.reused_tokens == 0
    c = rt.load_lora(write_random_lora(tmp_path / "c.gguf", embedded_gguf, seed=5))
    rt.set_loras({c: 1.0})
    _run(rt.generate_tokens(turn, max_new_tokens=2))
    rt.unload_lora(c)
    assert _run(rt.generate_tokens(turn, max_new_tokens=16))[0] == base and rt.reused_tokens == 0


def test_a_resized_context_keeps_the_active_adapters(rt, loras):
    """set_max_sequences rebuilds the context (a server's step decoder): the active LoRA must still apply."""
    import numpy as np

    a, _ = loras
    ids = rt.tokenize(PROMPTS[0], add_special=False)
    rt.set_loras([])
    base = rt.logits(ids)
    rt.set_loras({a: 1.0})
    with_a = rt.logits(ids)
    try:
        rt.set_max_sequences(3)
        assert rt.active_loras == ((a, 1.0),)
        np.testing.assert_array_equal(rt.logits(ids), with_a)
        assert np.abs(with_a - base).max() > 0.05
    finally:
        rt.set_max_sequences(1)
        rt.set_loras([])


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_the_llamacpp_path_imports_no_torch_or_transformers():
    code = (
        "from adaptrix_llamacpp import codec, runtime\nfrom adaptrix.models import gguf_hub\n"
        "from adaptrix.models.default_model import default_model_path\n"
        "rt = runtime.LlamaRuntime(default_model_path(), n_ctx=64, n_threads=1)\n"
        "c = codec.LlamaTextCodec(rt)\n"
        "ids = c.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True)\n"
        "list(rt.generate_tokens(ids, max_new_tokens=2))\n"
    )
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "llama_cpp" in imported and "jinja2" in imported  # the log is real
    assert not imported & {"torch", "transformers", "peft"}
