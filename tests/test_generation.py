"""The text pipeline and settings helpers, without a model."""

from __future__ import annotations

import itertools

import pytest

from adaptrix.backends.transformers.runner import transformers_kwargs
from adaptrix.errors import GenerationError
from adaptrix.generation.settings import explicit_settings, resolve_settings
from adaptrix.generation.text import IncrementalDecoder, TextPipeline, visible_text
from adaptrix.types import GenerationConfig

THINK = (("<think>", "</think>"),)


def splits(text: str, sizes=(1, 2, 3, 5, 7)):
    """The text cut into pieces of each size, as a streamer would deliver it."""
    for n in sizes:
        yield [text[i : i + n] for i in range(0, len(text), n)]


def streamed(pieces, spans=(), stops=()):
    p = TextPipeline(spans, stops)
    return "".join(p.feed(x) for x in pieces) + p.flush()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nplan it\n</think>\n\nThe answer is 4.", "The answer is 4."),
        ("Before <think>hidden</think>after", "Before after"),
        ("<think>a</think>x<think>b</think>y", "xy"),
        ("Answer <thi", "Answer <thi"),  # a partial tag that never completes is text
        ("Answer <think>cut off by max_new_tokens", "Answer"),
        ("no spans here", "no spans here"),
    ],
)
def test_hidden_spans_whole_and_streamed(text, expected):
    assert visible_text(text, THINK) == expected
    for pieces in splits(text):
        assert streamed(pieces, THINK) == expected, pieces


def test_show_thinking_keeps_spans():
    text = "<think>x</think>y"
    assert visible_text(text, ()) == text


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        ("Hello world. User: again", ["User:"], "Hello world."),
        ("a b c STOP d STOP", ["STOP"], "a b c"),
        ("abcdef", ["cd", "b"], "a"),  # the earliest stop wins
        ("abc", ["abcd"], "abc"),  # an incomplete stop at the end is text
        ("\nUser: hi", ["\nUser:"], ""),
    ],
)
def test_stop_strings_whole_and_streamed(text, stops, expected):
    assert visible_text(text, (), stops) == expected
    for pieces in splits(text):
        assert streamed(pieces, (), stops) == expected


def test_stop_applies_to_visible_text():
    # a stop string inside a hidden thought does not end the answer
    text = "<think>maybe END here</think>The answer END rest"
    assert visible_text(text, THINK, ["END"]) == "The answer"
    for pieces in splits(text):
        assert streamed(pieces, THINK, ["END"]) == "The answer"


def test_pipeline_every_two_way_split():
    text = "  <think>x y</think>\n Hello there STOP more  "
    whole = visible_text(text, THINK, ["STOP"])
    assert whole == "Hello there"
    for i, j in itertools.combinations(range(len(text) + 1), 2):
        assert streamed([text[:i], text[i:j], text[j:]], THINK, ["STOP"]) == whole


def test_whitespace_trimmed_both_ends():
    assert streamed(["  ", " hi", " ", "there ", " \n"]) == "hi there"


def test_explicit_settings_validation():
    assert explicit_settings(max_length=12).max_new_tokens == 12
    assert explicit_settings(stop="x").stop == ("x",)
    for kwargs, message in [
        (dict(temperature=-1), "temperature must be >= 0"),
        (dict(top_p=0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), "got 1.5"),
        (dict(max_new_tokens=0), "positive"),
        (dict(max_new_tokens=2.5), "whole number"),
        (dict(temperature="hot"), "must be a number"),
        (dict(max_length=3, max_new_tokens=4), "disagree"),
        (dict(stop=5), "stop must be a string"),
        (dict(top_k=-1), "top_k"),
    ]:
        with pytest.raises(GenerationError, match=message):
            explicit_settings(**kwargs)


def test_resolution_order():
    family = GenerationConfig(temperature=0.6, top_p=0.9, max_new_tokens=512, top_k=20)
    r = resolve_settings(GenerationConfig(), None, family)
    assert (r.temperature, r.top_p, r.top_k, r.max_new_tokens, r.repetition_penalty) == (0.6, 0.9, 20, 512, 1.0)
    r = resolve_settings(GenerationConfig(), "math", family)
    assert (r.temperature, r.top_p, r.top_k) == (0.1, 0.9, 20)
    r = resolve_settings(GenerationConfig(temperature=0.0), "creative", family)
    assert (r.temperature, r.top_p) == (0.0, 0.95)
    r = resolve_settings(GenerationConfig(), None, None)
    assert (r.temperature, r.top_p, r.max_new_tokens) == (0.7, 0.9, 256)  # global defaults


def test_transformers_kwargs_greedy_and_sampling():
    greedy = transformers_kwargs(GenerationConfig(temperature=0.0, top_p=0.5, top_k=3, max_new_tokens=5))
    assert greedy["do_sample"] is False
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"]) == (1.0, 1.0, 50)  # neutral values
    sample = transformers_kwargs(GenerationConfig(temperature=0.3, top_p=0.95, max_new_tokens=5))
    assert sample["do_sample"] is True and sample["temperature"] == 0.3 and sample["top_p"] == 0.95
    assert sample["top_k"] == 0  # no top_k unless a layer sets one


def test_incremental_decoder_holds_split_characters():
    from support.tiny import build_tokenizer

    tok = build_tokenizer()
    text = "naïve café, 25 times 8 is 200 ✓"
    ids = tok(text)["input_ids"]
    dec = IncrementalDecoder(tok)
    pieces = [dec.add([i]) for i in ids] + [dec.finish()]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("name", ["llama2-ortgenai", "mistral-v3", "phi2-codegen", "qwen3-4b-composite"])
def test_incremental_decoder_windows_equal_one_decode_on_real_tokenizers(fixtures_dir, name):
    """Token by token, the decoded windows add up to one decode of every id, with no fix-up left for finish()."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizers" / name)
    text = "Hello  world! naïve café, 25 × 8 = 200 ✓ 🙂\n  def f(x):\n\treturn x  # done. <|im_end|> ok"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    dec = IncrementalDecoder(tok)
    pieces = [dec.add([i]) for i in ids]
    assert dec.finish() == ""
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("name", ["llama2-ortgenai", "mistral-v3", "phi2-codegen", "qwen3-4b-composite"])
def test_raw_output_keeps_its_leading_space_on_real_tokenizers(fixtures_dir, name):
    """A raw completion (``trim=False``) is decoded after the prompt's last tokens: ``prompt + text`` is the
    decoded prompt + generation, also where decoding the new ids alone drops a leading space (SentencePiece:
    ``"▁Paris"`` alone reads ``"Paris"``). Streamed (the row's decoder) and whole (``finish_row``) alike."""
    from transformers import AutoTokenizer

    from adaptrix.generation.conversation import Prompt
    from adaptrix.generation.result import PreparedRequest
    from adaptrix.generation.steps import Row, finish_row
    from adaptrix.types import GenerationConfig

    tok = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizers" / name)
    prompt = "The capital of France is"
    ids = tok(prompt)["input_ids"]
    new = tok(prompt + " Paris.\n\n  It is big")["input_ids"][len(ids):]
    want = tok.decode(ids + new, skip_special_tokens=True)
    assert want.startswith(prompt + " ")
    prepared = PreparedRequest(prompt=Prompt(prompt, tuple(ids), (), 0, False), settings=GenerationConfig(
        max_new_tokens=50), stops=(), spans=(), inside=None, eos_ids=(), pad_id=None, trim=False)
    assert prompt + finish_row(prepared, new, tok).text == want
    row = Row.open(0, prepared, None, tok)
    streamed = "".join(row.accept(t) for t in new) + row.pipeline.feed(row.decoder.finish()) + row.pipeline.flush()
    assert prompt + streamed == want
