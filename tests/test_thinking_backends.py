"""Hidden ``<think>`` spans behave the same on every backend (issue 9: one API, same behaviour).

One tiny random Qwen3 model, with ``<think>``/``</think>`` as added plain
(non-special) tokens as in real Qwen3 (USER_DEFINED in its GGUF), and the
real hybrid Qwen3 chat template: the transformers backend runs its HF folder,
the llama.cpp backend its float32 GGUF. Random weights do not think on cue,
so each backend's token source is replaced by one that emits a fixed token
sequence (``model.generate`` on transformers, honouring its streamer and
stopping criteria; ``runtime.generate_tokens`` on llama.cpp): what is tested
is the engine's formatting, end-of-turn handling, hiding, stop strings and
streaming on top of each backend.
"""

from __future__ import annotations

import pytest

from support.forced import engines_per_backend, force_output, forced_ids
from support.tiny_gguf import build_tiny_gguf

THOUGHT = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is 4."
QUESTION = "What is 2+2?"
BACKENDS = ["transformers", "llamacpp"]


@pytest.fixture(scope="module")
def qwen3_files(fixtures_dir, tmp_path_factory):
    """``(hf_folder, gguf_path)`` of one tiny Qwen3 with think tokens and the hybrid Qwen3 template."""
    template = fixtures_dir / "chat-templates" / "qwen3-0.6b.jinja"
    if not template.is_file():
        pytest.skip(f"{template} not found")
    pytest.importorskip("gguf")
    return build_tiny_gguf(
        "qwen3", tmp_path_factory.mktemp("think-qwen3"),
        extra_tokens=("<think>", "</think>"), chat_template=template.read_text(encoding="utf-8"),
    )


@pytest.fixture(scope="module")
def engines(qwen3_files, one_thread):
    """``engines(backend) -> Engine`` on the same model, loaded once per backend."""
    yield from engines_per_backend(*qwen3_files)


@pytest.fixture(params=BACKENDS)
def engine(request, engines):
    return engines(request.param)


# -- the prompt -----------------------------------------------------------------------


def _prompt(e, **kw):
    return e.prepare_request(QUESTION, max_new_tokens=8, **kw).prompt


@pytest.mark.parametrize("enable_thinking", [None, False, True])
def test_prompt_text_and_ids_are_the_same_on_both_backends(engines, enable_thinking):
    ref, cpp = engines("transformers"), engines("llamacpp")
    a, b = _prompt(ref, enable_thinking=enable_thinking), _prompt(cpp, enable_thinking=enable_thinking)
    assert b.text == a.text
    assert list(b.input_ids) == list(a.input_ids)
    # thinking off (the qwen default) closes an empty span; on leaves the model to open one
    assert a.text.endswith("<think>\n\n</think>\n\n") is (enable_thinking is not True)


def test_think_tags_are_one_plain_token_each_on_both_backends(engines):
    ref, cpp = engines("transformers"), engines("llamacpp")
    assert forced_ids(cpp, THOUGHT) == forced_ids(ref, THOUGHT)
    for e in (ref, cpp):
        tok = e.tokenizer
        think = tok.convert_tokens_to_ids("<think>")
        assert tok("<think>", add_special_tokens=False)["input_ids"] == [think]
        # plain, not special: decoding that skips special tokens keeps the tags (the text pipeline hides them)
        assert tok.decode(forced_ids(e, THOUGHT), skip_special_tokens=True) == THOUGHT


def test_both_backends_report_the_same_thinking_setup(engines):
    infos = [engines(b).get_model_info() for b in BACKENDS]
    for key in ("family", "chat_template_kwargs", "hidden_spans"):
        assert infos[0][key] == infos[1][key], key
    assert infos[0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert infos[0]["hidden_spans"] == [["<think>", "</think>"]]


# -- the answer -----------------------------------------------------------------------


def test_thought_is_hidden_in_generate_and_stream(engine, monkeypatch):
    forced = force_output(engine, monkeypatch, THOUGHT)
    r = engine.generate_detailed(QUESTION, max_new_tokens=100)
    assert (r.text, r.finish_reason) == ("The answer is 4.", "eos")
    assert list(r.token_ids) == forced  # the end-of-turn token is kept, as the model produced it
    pieces = list(engine.stream(QUESTION, max_new_tokens=100))
    assert "".join(pieces) == "The answer is 4."
    assert not any("<think>" in p or "That is 4" in p for p in pieces)


def test_show_thinking_returns_the_thought(engine, monkeypatch):
    force_output(engine, monkeypatch, THOUGHT)
    shown = engine.generate(QUESTION, show_thinking=True, max_new_tokens=100)
    assert shown == THOUGHT
    assert "".join(engine.stream(QUESTION, show_thinking=True, max_new_tokens=100)) == THOUGHT


def test_a_thought_cut_off_is_not_an_answer(engine, monkeypatch):
    force_output(engine, monkeypatch, THOUGHT)
    r = engine.generate_detailed(QUESTION, max_new_tokens=5)
    assert (r.text, r.finish_reason) == ("", "length")
    assert len(r.token_ids) == 5
    assert "".join(engine.stream(QUESTION, max_new_tokens=5)) == ""


def test_a_stop_string_inside_the_thought_does_not_stop(engine, monkeypatch):
    forced = force_output(engine, monkeypatch, THOUGHT)
    r = engine.generate_detailed(QUESTION, max_new_tokens=100, stop=["That is"])
    assert (r.text, r.finish_reason) == ("The answer is 4.", "eos")
    assert list(r.token_ids) == forced  # generation ran on through the thought
    assert "".join(engine.stream(QUESTION, max_new_tokens=100, stop=["That is"])) == "The answer is 4."


def test_a_stop_string_in_the_answer_cuts_it(engine, monkeypatch):
    forced = force_output(engine, monkeypatch, THOUGHT)
    r = engine.generate_detailed(QUESTION, max_new_tokens=100, stop=["is 4"])  # also in the thought: "That is 4"
    assert (r.text, r.finish_reason) == ("The answer", "stop")
    assert len(r.token_ids) < len(forced)  # generation stopped there
    assert "".join(engine.stream(QUESTION, max_new_tokens=100, stop=["is 4"])) == "The answer"


def test_thinking_on_gives_the_same_answer(engine, monkeypatch):
    force_output(engine, monkeypatch, THOUGHT)
    r = engine.generate_detailed(QUESTION, enable_thinking=True, max_new_tokens=100)
    assert (r.text, r.finish_reason) == ("The answer is 4.", "eos")
