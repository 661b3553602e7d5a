"""Tool calling end to end on the embedded SmolLM2 (a Llama-architecture model: the llama family's
``llama3-json`` format; its template knows no tools, so they go in the system prompt), on both backends:
the library (``Engine.chat``) and ``/v1/chat/completions`` (issue 18 item 2).

The model's output is forced (:mod:`support.forced`) where a test checks what the server makes of a call;
tests marked :data:`NEEDS_GRAMMAR` generate freely under ``tool_choice`` required / a named function and
need the backends to enforce :class:`~adaptrix.generation.grammar.Grammar` (the grammar branch): remove the
mark once it has merged.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from support.forced import force_output  # noqa: E402
from support.server import LiveServer  # noqa: E402

#: The tests that need grammar enforcement on the backends (issue 18 item 1, branch grammar, whose
#: ``adaptrix.generation.matcher`` the backends mask tokens with): expected to fail without it, run as plain
#: tests once it is there (a trial merge of the two branches passed all six, 2026-12-05). The mark may go then.
NEEDS_GRAMMAR = pytest.mark.xfail(importlib.util.find_spec("adaptrix.generation.matcher") is None, strict=True,
                                  reason="needs constrained decoding (the grammar branch's adaptrix.generation.matcher)")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}'
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ROUND_TRIP = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "C"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"}]


@pytest.fixture(params=["transformers", "llamacpp"])
def engine(request):
    return request.getfixturevalue("smollm2_engine" if request.param == "transformers" else "smollm2_llamacpp")


# -- library -------------------------------------------------------------------------------------------------
def test_chat_returns_the_calls_the_model_wrote(engine, monkeypatch):
    force_output(engine, monkeypatch, CALL)
    result = engine.chat(ASK, tools=[WEATHER, ADD], max_new_tokens=40, temperature=0)
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("get_weather", {"city": "Paris", "unit": "C"})]
    assert result.text == ""
    streamed = engine.stream_detailed("What is the weather in Paris?", tools=[WEATHER], max_new_tokens=40)
    assert CALL in "".join(streamed)  # the library stream gives the text; its result the calls
    assert [c.name for c in streamed.result.tool_calls] == ["get_weather"]


def test_without_tools_or_with_tool_choice_none_a_call_stays_text(engine, monkeypatch):
    force_output(engine, monkeypatch, CALL)
    for options in ({}, {"tools": [WEATHER], "tool_choice": "none"}):
        result = engine.chat(ASK, max_new_tokens=40, temperature=0, **options)
        assert result.tool_calls == () and result.text == CALL


def test_tools_are_offered_in_the_prompt_and_tool_turns_render(engine):
    prepared = engine.prepare_request("22 degrees and sunny", history=ROUND_TRIP[:2], tools=[WEATHER],
                                      prompt_message={"role": "tool", "tool_call_id": "call_1"})
    text = prepared.prompt.text
    assert '"name": "get_weather"' in text and "The current weather in a city" in text  # offered
    assert CALL in text  # the earlier call, in the family's own format
    assert text.index(CALL) < text.index("22 degrees and sunny")
    assert prepared.grammar is None  # auto: nothing forced
    forced = engine.prepare_request("Weather?", tools=[WEATHER, ADD], tool_choice="required").grammar
    assert forced.kind == "lark" and '"const": "get_weather"' in forced.source and '"const": "add"' in forced.source
    named = engine.prepare_request("Weather?", tools=[WEATHER, ADD],
                                   tool_choice={"type": "function", "function": {"name": "add"}}).grammar
    assert '"const": "add"' in named.source and "get_weather" not in named.source


def test_an_agent_loop_continues_after_the_tool_result(engine):
    result = engine.chat(ROUND_TRIP, tools=[WEATHER], max_new_tokens=12, temperature=0)
    assert result.text and result.finish_reason in ("eos", "length", "stop")


def _valid_call(calls, tools):
    jsonschema = pytest.importorskip("jsonschema")
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert calls, "no call"
    for call in calls:
        assert call.name in offered
        jsonschema.validate(json.loads(call.arguments), offered[call.name])


@NEEDS_GRAMMAR
def test_required_gives_a_valid_call_even_from_the_135m_model(engine):
    result = engine.chat([{"role": "user", "content": "Tell me a joke."}], tools=[WEATHER, ADD],
                         tool_choice="required", max_new_tokens=120, temperature=0)
    _valid_call(result.tool_calls, [WEATHER, ADD])


@NEEDS_GRAMMAR
def test_a_named_function_is_the_one_called(engine):
    result = engine.chat(ASK, tools=[WEATHER, ADD], tool_choice={"type": "function", "function": {"name": "add"}},
                         max_new_tokens=120, temperature=0)
    _valid_call(result.tool_calls, [ADD])
    assert {c.name for c in result.tool_calls} == {"add"}


# -- server --------------------------------------------------------------------------------------------------
@pytest.fixture
def server(engine):
    from adaptrix.serve.app import ServeOptions, create_app

    # one request at a time: the engine's own generate/stream run, whose token source force_output replaces
    with LiveServer(create_app(lambda: engine, ServeOptions(adapters_dir=None, batching="off"))) as srv:
        yield srv


def _post(server, body):
    return httpx.post(server.url + "/v1/chat/completions", json={"model": "base", "max_tokens": 40, **body}, timeout=120)


def test_the_server_answers_tool_calls(server, engine, monkeypatch):
    force_output(engine, monkeypatch, CALL)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER, ADD], max_tokens=40)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris", "unit": "C"})


def test_the_server_streams_tool_call_deltas_as_openai_does(server, engine, monkeypatch):
    force_output(engine, monkeypatch, CALL)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER], max_tokens=40,
                                                 stream=True))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    first, rest = deltas[0], deltas[1:]
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather") and first.id
    assert rest and all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    assert json.loads("".join(d.function.arguments for d in deltas)) == {"city": "Paris", "unit": "C"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks).strip()


def test_the_server_takes_a_tool_result_turn(server):
    """Before issue 18: 400 "'messages[1].content' is required" (the assistant's call has content null), and
    400 for role tool. An agent loop must be able to send the result back."""
    for tools in ({}, {"tools": [WEATHER]}):
        r = _post(server, {"messages": ROUND_TRIP, "max_tokens": 8, "temperature": 0, **tools})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "add"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [*ASK, {"role": "assistant", "content": None}]}, "messages[1].content"),
    ({"messages": [*ROUND_TRIP[:2], {"role": "tool", "content": "22"}]}, "messages[2].tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}]},
     "messages[1].tool_calls[0].function"),
])
def test_bad_tools_get_a_400_naming_the_field(server, body, param):
    r = _post(server, {"messages": ASK, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert _post(server, {"messages": ASK, "max_tokens": 2}).status_code == 200  # still serving


@NEEDS_GRAMMAR
def test_the_server_forces_a_call_with_required(server):
    r = _post(server, {"messages": [{"role": "user", "content": "Tell me a joke."}], "tools": [WEATHER, ADD],
                       "tool_choice": "required", "max_tokens": 120, "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    jsonschema = pytest.importorskip("jsonschema")
    for call in choice["message"]["tool_calls"]:
        params = {"get_weather": WEATHER, "add": ADD}[call["function"]["name"]]["function"]["parameters"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), params)


def test_the_playground_shows_a_call_as_a_call(request, monkeypatch, tmp_path):
    """The playground, in headless Chromium, with tools given: the model's call is shown as a call (its
    name and its arguments), not as the raw text the model wrote."""
    from pathlib import Path

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    engine = request.getfixturevalue("smollm2_llamacpp")
    force_output(engine, monkeypatch, 'Let me check. <|python_tag|>' + CALL)
    from adaptrix.serve.app import ServeOptions, create_app

    with LiveServer(create_app(lambda: engine, ServeOptions(adapters_dir=None, batching="off"))) as srv, \
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 600})
            page.goto(srv.url + "/")
            page.wait_for_selector("#models input[value='base']")
            page.fill("#prompt", "What is the weather in Paris?")
            page.fill("#tools", json.dumps([WEATHER]))
            page.check("#models input[value='base']")
            page.click("#run")
            page.wait_for_function("document.querySelectorAll('.col[data-done]').length == 1", timeout=60_000)
            assert page.inner_text(".col .out .call .name") == "get_weather"
            assert json.loads(page.inner_text(".col .out .call .args")) == {"city": "Paris", "unit": "C"}
            assert page.get_attribute(".col", "data-finish") == "tool_calls"
            text = page.inner_text(".col .out")
            assert text.startswith("Let me check.") and '"parameters"' not in text
            page.screenshot(path=str(tmp_path / "tools.png"))
        finally:
            browser.close()


def test_chat_takes_the_conversation_from_messages_only(smollm2_llamacpp):
    from adaptrix.errors import GenerationError, ToolError

    with pytest.raises(GenerationError, match="drop system="):
        smollm2_llamacpp.chat(ASK, system="Be brief.")
    with pytest.raises(ToolError, match="tool_call_id"):
        smollm2_llamacpp.chat([*ROUND_TRIP[:2], {"role": "tool", "content": "22"}])
