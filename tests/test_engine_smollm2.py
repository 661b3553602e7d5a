"""End to end on real weights: the embedded SmolLM2-135M-Instruct through the GGUF cache."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_weights

QUESTION = "What is the capital of France?"


def test_paris(smollm2_engine):
    answer = smollm2_engine.generate(QUESTION, temperature=0, max_new_tokens=16)
    assert "Paris" in answer


def test_greedy_equals_raw_model_generate(smollm2_engine):
    import torch

    e = smollm2_engine
    tok, model = e.tokenizer, e.model
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
    r = e.generate_detailed(QUESTION, temperature=0, max_new_tokens=16)
    assert list(r.token_ids) == out[0, ids.shape[1]:].tolist()


def test_info_and_stream(smollm2_engine):
    info = smollm2_engine.get_model_info()
    assert info["family"] == "llama" and info["architecture"] == "LlamaForCausalLM"
    assert info["gguf_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert 130e6 < info["parameters"] < 140e6 and info["context_length"] == 8192
    # dtype="auto" on the CPU: float32, as before, because its weights (from the GGUF header) fit.
    assert info["dtype"] == "float32" and "fit in" in info["dtype_reason"] and "GGUF header" in info["dtype_reason"]
    pieces = list(smollm2_engine.stream(QUESTION, temperature=0, max_new_tokens=8))
    assert len(pieces) > 1 and "".join(pieces) == smollm2_engine.generate(QUESTION, temperature=0, max_new_tokens=8)


def test_context_carries_over(smollm2_engine):
    # A 135M model does not reliably answer "What's my name?"; check the history reaches the prompt.
    e = smollm2_engine
    try:
        first = e.generate("My name is Alice.", conversation="alice", temperature=0, max_new_tokens=8)
        with_history = e.generate_detailed("What's my name?", conversation="alice", temperature=0, max_new_tokens=4)
        alone = e.generate_detailed("What's my name?", temperature=0, max_new_tokens=4)
        turn = len(e.tokenizer("My name is Alice." + first, add_special_tokens=False)["input_ids"])
        assert with_history.prompt_tokens >= alone.prompt_tokens + turn
    finally:
        e.reset_context()


def test_a_second_engine_reuses_the_converted_cache(smollm2_engine):
    """A cached start converts nothing again (timings live in bench/bench_engine.py): same folder,
    files untouched, same answer."""
    from pathlib import Path

    from adaptrix import Engine

    folder = Path(smollm2_engine.get_model_info()["source"])
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    e = Engine(progress=False, backend="transformers")
    e.initialize()
    try:
        assert e.get_model_info()["source"] == str(folder)
        assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
        assert e.generate(QUESTION, temperature=0, max_new_tokens=8) == smollm2_engine.generate(
            QUESTION, temperature=0, max_new_tokens=8
        )
    finally:
        e.cleanup()
