"""The clients agent and application code uses, unchanged, against ``adaptrix serve``: structured output and tools.

Issue 18 item 4, on both backends, on the embedded SmolLM2 and one of its example adapters:

- the openai SDK's ``chat.completions.parse`` with a pydantic model;
- LangChain ``ChatOpenAI.with_structured_output`` in its three methods;
- a LangChain ``bind_tools`` round trip: a forced call, the tool's result sent back, a final answer;
- litellm with ``tools``.

The 135M model is too small to answer well; what these tests hold the server to is the shape: every answer
parses and validates, every call names an offered function with arguments that validate against its
parameters, and each client gets back the objects it promises its user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")
jsonschema = pytest.importorskip("jsonschema")

from support.server import LiveServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "adapters"
MODELS = ["base", "math_specialist"]
MAX_TOKENS = 96

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


class Answer(pydantic.BaseModel):
    """A number and a word, what the small model is asked for."""

    value: int
    word: str = pydantic.Field(max_length=30)


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def server(request):
    """``adaptrix serve`` around the session's SmolLM2 on one backend, with the example adapters loaded."""
    from adaptrix.serve.app import ServeOptions, create_app

    engine = request.getfixturevalue("smollm2_engine" if request.param == "transformers" else "smollm2_llamacpp")
    runtime = getattr(engine.runner, "runtime", None)
    if runtime is not None and hasattr(runtime, "set_threads"):  # llama.cpp: one thread on a busy machine
        before = runtime.n_threads
        runtime.set_threads(1)
        request.addfinalizer(lambda: runtime.set_threads(before))
    for name in MODELS[1:]:
        if name not in engine.adapters.loaded_names():
            engine.load_adapter(str(EXAMPLES / name), activate=False)
    app = create_app(lambda: engine, ServeOptions(adapters_dir=str(EXAMPLES)))
    with LiveServer(app) as srv:
        yield srv


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def _check_call(call) -> dict:
    """A call to ``get_weather`` whose arguments validate against its parameters; returns the arguments."""
    assert call["name"] == "get_weather"
    args = call["args"] if "args" in call else json.loads(call["arguments"])
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


@pytest.mark.real_weights
@pytest.mark.parametrize("model", MODELS)
def test_openai_parse_with_a_pydantic_model(server, model):
    out = _client(server).chat.completions.parse(
        model=model, temperature=0, max_tokens=MAX_TOKENS, response_format=Answer,
        messages=[{"role": "user", "content": "Give a number and a word as JSON."}])
    choice = out.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, Answer)
    assert Answer.model_validate_json(choice.message.content) == choice.message.parsed


@pytest.mark.real_weights
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(server, method):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key="x", model="math_specialist",
                                      temperature=0, max_tokens=MAX_TOKENS, max_retries=0)
    prompt = "Reply in JSON with a number 'value' and a word 'word'."
    if method == "json_mode":  # json_mode promises a JSON object, not a schema: LangChain parses it into a dict
        got = llm.with_structured_output(method="json_mode").invoke(prompt)
        assert isinstance(got, dict)
    else:
        got = llm.with_structured_output(Answer, method=method).invoke(prompt)
        assert isinstance(got, Answer)


@pytest.mark.real_weights
def test_langchain_bind_tools_round_trip(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key="x", model="base", temperature=0,
                                      max_tokens=MAX_TOKENS, max_retries=0)
    question = HumanMessage("What is the weather in Paris?")
    first = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke([question])
    assert len(first.tool_calls) >= 1 and first.response_metadata["finish_reason"] == "tool_calls"
    args = _check_call(first.tool_calls[0])
    results = [ToolMessage(json.dumps({"city": args["city"], "temperature": 21, "unit": args["unit"]}),
                           tool_call_id=call["id"]) for call in first.tool_calls]
    final = llm.bind_tools([WEATHER], tool_choice="none").invoke([question, first, *results])
    assert final.tool_calls == [] and isinstance(final.content, str) and final.content.strip()
    assert final.response_metadata["finish_reason"] in ("stop", "length")


@pytest.mark.real_weights
@pytest.mark.parametrize("model", MODELS)
def test_litellm_with_tools(server, model):
    litellm = pytest.importorskip("litellm")
    out = litellm.completion(model=f"openai/{model}", api_base=server.url + "/v1", api_key="x", temperature=0,
                             max_tokens=MAX_TOKENS, tools=[WEATHER], tool_choice="required",
                             messages=[{"role": "user", "content": "Weather in Oslo, in celsius?"}])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.id for c in calls)
    for c in calls:
        _check_call({"name": c.function.name, "arguments": c.function.arguments})
