"""Qwen3 thinking: enable_thinking reaches the template, <think> spans stay out of returned text.

A tiny random Qwen3 model paired with the real Qwen3 tokenizer (shared fixture).
Random weights do not think on cue, so the model's ``generate`` is replaced by
one that emits a fixed token sequence (through the streamer too): the engine's
formatting, eos handling, hiding and streaming are what is tested.
"""

from __future__ import annotations

import shutil

import pytest

from adaptrix import Engine
from adaptrix.generation.text import visible_text

THOUGHT = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is 4."


@pytest.fixture(scope="module")
def qwen3_real_tok(fixtures_dir, tmp_path_factory):
    src = fixtures_dir / "tokenizers" / "qwen3-4b-composite"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen3-realtok")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = AutoConfig.for_model(
        "qwen3", vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    engine = Engine(str(folder), progress=False)
    engine.initialize()
    yield engine
    engine.cleanup()


def forced_generate(engine, text):
    import torch

    tok = engine.tokenizer
    forced = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]

    def fake(input_ids, attention_mask=None, streamer=None, max_new_tokens=None, **kwargs):
        new = forced[:max_new_tokens]
        if streamer is not None:
            streamer.put(input_ids)
            for t in new:
                streamer.put(torch.tensor([t]))
            streamer.end()
        return torch.cat([input_ids, torch.tensor([new])], dim=1)

    return fake


@pytest.fixture
def hybrid(qwen3_real_tok, fixtures_dir, monkeypatch):
    """The hybrid Qwen3 template (enable_thinking switches thinking on and off)."""
    template = (fixtures_dir / "chat-templates" / "qwen3-0.6b.jinja").read_text()
    monkeypatch.setattr(qwen3_real_tok.tokenizer, "chat_template", template)
    return qwen3_real_tok


def fmt(e, **kw):
    return e.prepare_request("Hi", max_new_tokens=4, **kw).prompt


def test_qwen3_template_kwargs(qwen3_real_tok, hybrid):
    e = qwen3_real_tok
    assert e.family == "qwen"
    assert e.get_model_info()["chat_template_kwargs"] == {"enable_thinking": False}
    off, on = fmt(e, enable_thinking=None), fmt(e, enable_thinking=True)
    assert off.text.endswith("<think>\n\n</think>\n\n")  # the family default: thinking off
    assert not on.text.endswith("</think>\n\n")


def test_thinking_only_template_opens_the_span(qwen3_real_tok):
    # the shared tokenizer_config is the Thinking-2507 variant: its prompt always ends with "<think>\n"
    assert fmt(qwen3_real_tok, enable_thinking=None).text.endswith("<think>\n")


def test_thinking_hidden_in_generate_and_stream(hybrid, monkeypatch):
    e = hybrid
    monkeypatch.setattr(e.model, "generate", forced_generate(e, THOUGHT))
    r = e.generate_detailed("What is 2+2?", enable_thinking=False, max_new_tokens=100)
    assert r.text == "The answer is 4."
    assert r.finish_reason == "eos"
    assert "".join(e.stream("What is 2+2?", enable_thinking=False, max_new_tokens=100)) == "The answer is 4."
    shown = e.generate("What is 2+2?", enable_thinking=False, show_thinking=True, max_new_tokens=100)
    assert shown.startswith("<think>") and "That is 4." in shown and shown.endswith("The answer is 4.")


def test_thinking_opened_by_the_prompt(qwen3_real_tok, monkeypatch):
    # the Thinking-2507 template ends the prompt with "<think>\n": the output has only the closing tag
    e = qwen3_real_tok
    monkeypatch.setattr(e.model, "generate", forced_generate(e, THOUGHT.removeprefix("<think>")))
    assert e.generate("What is 2+2?", enable_thinking=True, max_new_tokens=100) == "The answer is 4."
    assert "".join(e.stream("What is 2+2?", enable_thinking=True, max_new_tokens=100)) == "The answer is 4."


def test_thought_cut_off_is_not_an_answer(hybrid, monkeypatch):
    e = hybrid
    monkeypatch.setattr(e.model, "generate", forced_generate(e, THOUGHT))
    r = e.generate_detailed("What is 2+2?", enable_thinking=False, max_new_tokens=5)
    assert r.text == "" and r.finish_reason == "length"


def test_think_tags_are_single_tokens(qwen3_real_tok):
    tok = qwen3_real_tok.tokenizer
    assert tok.convert_tokens_to_ids("<think>") == 151667
    assert visible_text(tok.decode(tok(THOUGHT)["input_ids"], skip_special_tokens=True), (("<think>", "</think>"),)) \
        == "The answer is 4."
