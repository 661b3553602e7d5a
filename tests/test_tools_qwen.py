"""The hermes format end to end on a tiny random Qwen3 with Qwen3's real chat template (it takes ``tools=``,
``tool_calls`` and ``role: "tool"``) and ``<tool_call>`` as added tokens, on both backends: the prompt is the
same on each, a call the model writes comes back parsed, and the forced-call grammar names the tag tokens."""

from __future__ import annotations

import json

import pytest

from support.forced import engines_per_backend, force_output
from support.tiny_gguf import build_tiny_gguf

BACKENDS = ["transformers", "llamacpp"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TURNS = [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
OUTPUT = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def qwen3_files(fixtures_dir, tmp_path_factory):
    template = fixtures_dir / "chat-templates" / "qwen3-0.6b.jinja"
    pytest.importorskip("gguf")
    return build_tiny_gguf(
        "qwen3", tmp_path_factory.mktemp("tools-qwen3"),
        extra_tokens=("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"),
        chat_template=template.read_text(encoding="utf-8"), context=2048,
    )


@pytest.fixture(scope="module")
def thinker(fixtures_dir, tmp_path_factory, one_thread):
    """A tiny Qwen3 with Qwen3-4B-Thinking-2507's template, whose prompt opens a ``<think>`` the model closes."""
    template = fixtures_dir / "chat-templates" / "qwen3-4b-2507.warpio-model-card.jinja"
    hf, _ = build_tiny_gguf(
        "qwen3", tmp_path_factory.mktemp("tools-thinker"),
        extra_tokens=("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"),
        chat_template=template.read_text(encoding="utf-8"), context=2048,
    )
    from adaptrix import Engine

    engine = Engine(str(hf), backend="transformers", threads=1, progress=False)
    engine.initialize()
    yield engine
    engine.cleanup()


@pytest.fixture(scope="module")
def engines(qwen3_files, one_thread):
    yield from engines_per_backend(*qwen3_files)


@pytest.fixture(params=BACKENDS)
def engine(request, engines):
    return engines(request.param)


def test_the_prompt_with_tools_and_tool_turns_is_the_same_on_both_backends(engines):
    prompts = [engines(b).prepare_request("22 C", history=TURNS, tools=[WEATHER], max_new_tokens=8,
                                          prompt_message={"role": "tool", "tool_call_id": "call_9"}).prompt
               for b in BACKENDS]
    assert prompts[0].text == prompts[1].text and prompts[0].input_ids == prompts[1].input_ids
    text = prompts[0].text
    assert "<tools>\n" + json.dumps(WEATHER) in text  # the template's own rendering of tools=
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n22 C\n</tool_response>" in text
    assert engines("transformers").get_model_info()["tool_format"] == "hermes"


def test_a_written_call_comes_back_parsed_on_each_backend(engine, monkeypatch):
    force_output(engine, monkeypatch, OUTPUT)
    result = engine.chat([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER], max_new_tokens=200)
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert result.text == "Checking."


def test_the_forced_grammar_names_the_tag_tokens_the_same_on_both_backends(engines):
    grammars = [engines(b).prepare_request("hi", tools=[WEATHER], tool_choice="required").grammar for b in BACKENDS]
    assert grammars[0] == grammars[1]
    tok = engines("transformers").tokenizer
    open_id, close_id = tok.convert_tokens_to_ids("<tool_call>"), tok.convert_tokens_to_ids("</tool_call>")
    assert f"<[{open_id}]>" in grammars[0].source and f"<[{close_id}]>" in grammars[0].source
    assert '"<tool_call>"' not in grammars[0].source


def test_a_call_after_a_thought_comes_back_and_a_forced_one_closes_the_thought_first(thinker, monkeypatch):
    """The prompt opens <think>: the calls are read after the thought (which stays hidden), and the grammar of
    tool_choice required writes </think> before the call, else the call would be hidden inside the thought."""
    prepared = thinker.prepare_request("hi", tools=[WEATHER], tool_choice="required")
    assert prepared.prompt.text.endswith("<think>\n") and prepared.inside == "</think>"
    think_id = thinker.tokenizer.convert_tokens_to_ids("</think>")
    assert prepared.grammar.source.startswith(f"start: <[{think_id}]> ")
    force_output(thinker, monkeypatch, "Paris, so get_weather.\n</think>\n\n" + OUTPUT)
    result = thinker.chat([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER], max_new_tokens=300)
    assert [c.name for c in result.tool_calls] == ["get_weather"] and result.text == "Checking."
