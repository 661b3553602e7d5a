"""Scores and generation logprobs on the llama.cpp backend, against raw llama-cpp-python.

The oracle (:class:`support.llamacpp.RawLlama`) runs the same GGUF file and the
same GGUF LoRA through llama.cpp's low-level API, each sequence in one batch as
the backend scores it (llama.cpp's logits depend on the batch layout: compare
the same layout). Measured: at most 3.1e-7 apart (float32 against float64
``log_softmax`` of identical logits), with and without ``math_specialist``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

MATH = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "math_specialist"
ITEMS = [("What is 25 times 8?", " 25 times 8 is 200."), ("The capital of France is", " Paris"),
         ("def add(a, b):", "\n    return a + b")]
TOL = 1e-4


@pytest.fixture(scope="module")
def engine(smollm2_llamacpp):
    smollm2_llamacpp.load_adapter(str(MATH), activate=False)
    yield smollm2_llamacpp
    smollm2_llamacpp.unload_adapter("math_specialist")


@pytest.fixture(scope="module")
def raw(engine, embedded_gguf):
    """The oracle on the same file, the same context and batch sizes, the adapter's GGUF LoRA loaded."""
    from adaptrix_llamacpp.lora_cache import cached_lora
    from support.llamacpp import RawLlama

    runtime = engine.runner.runtime
    lora = cached_lora(engine.adapters.info("math_specialist").path, embedded_gguf, progress=False)
    with RawLlama(embedded_gguf, n_ctx=runtime.n_ctx, n_batch=runtime.n_batch) as oracle:
        oracle.math = oracle.load_adapter(lora)
        yield oracle


def _oracle(raw, ids, adapter):
    raw.set_adapters([(raw.math, 1.0)] if adapter else [])
    return raw.logprobs(ids)


@pytest.mark.parametrize("adapters", [None, ["math_specialist"] * 3, ["math_specialist", None, "math_specialist"]],
                         ids=["base", "adapter", "mixed"])
def test_score_batch_equals_raw_llama_cpp(engine, raw, adapters):
    tok = engine.tokenizer
    worst = 0.0
    for i, ((context, continuation), score) in enumerate(zip(ITEMS, engine.score_batch(ITEMS, adapters=adapters,
                                                                                       top=3))):
        ctx, whole = tok(context)["input_ids"], tok(context + continuation)["input_ids"]
        assert score.context_tokens == len(ctx)
        assert [t.token_id for t in score.tokens] == whole[len(ctx):]
        lp = _oracle(raw, whole, adapters and adapters[i])
        for k, t in enumerate(score.tokens):
            row = lp[len(ctx) + k - 1]
            worst = max(worst, abs(t.logprob - row[t.token_id]))
            assert t.greedy == (int(row.argmax()) == t.token_id)
            assert [a for a, _, _ in t.top] == list(row.argsort()[::-1][:3])
    assert worst < TOL


def test_the_adapter_changes_the_scores_and_leaves_the_active_state(engine):
    base = engine.score(*ITEMS[0], adapter=None)
    math = engine.score(*ITEMS[0], adapter="math_specialist")
    assert abs(base.logprob - math.logprob) > 0.1
    assert engine.active_adapter is None
    assert engine.score(*ITEMS[0]).logprob == base.logprob


def test_generation_logprobs_equal_raw_scores_of_the_generated_tokens(engine, raw):
    for adapter in (None, "math_specialist"):
        result = engine.generate_detailed("What is 2+2?", adapter=adapter, max_new_tokens=8, temperature=0,
                                          repetition_penalty=1.0, logprobs=2)
        prompt = engine.prepare_request("What is 2+2?", max_new_tokens=8).input_ids
        ids = list(prompt) + list(result.token_ids)
        lp = _oracle(raw, ids, adapter)
        assert [t.token_id for t in result.logprobs] == list(result.token_ids)
        assert all(len(t.top) == 2 for t in result.logprobs)
        assert max(abs(t.logprob - lp[len(prompt) + i - 1, t.token_id])
                   for i, t in enumerate(result.logprobs)) < TOL
        stream = engine.stream_detailed("What is 2+2?", adapter=adapter, max_new_tokens=8, temperature=0,
                                        repetition_penalty=1.0, logprobs=2)
        assert "".join(stream) == result.text and stream.result.logprobs == result.logprobs


def test_token_logprobs_from_the_first_token(engine, raw):
    ids = engine.tokenizer("The capital of France is Paris.")["input_ids"]
    tokens = engine.token_logprobs(ids, start=0)
    assert tokens[0].logprob is None and [t.token_id for t in tokens] == ids
    lp = _oracle(raw, ids, None)
    assert max(abs(t.logprob - lp[i, ids[i + 1]]) for i, t in enumerate(tokens[1:])) < TOL


def test_a_weighted_composition_scores_as_the_lora_at_that_scale(engine, raw):
    tok = engine.tokenizer
    context, continuation = ITEMS[0]
    ctx, whole = tok(context)["input_ids"], tok(context + continuation)["input_ids"]
    score = engine.score(context, continuation, adapter={"math_specialist": 0.5})
    raw.set_adapters([(raw.math, 0.5)])
    lp = raw.logprobs(whole)
    assert max(abs(t.logprob - lp[len(ctx) + k - 1, t.token_id]) for k, t in enumerate(score.tokens)) < TOL
    assert engine.active_adapter is None
