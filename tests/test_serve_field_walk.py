"""Every request field of OpenAI's chat-completions and completions create params, taken from the installed
openai SDK, is served (a request here shows its effect), refused with a 400 naming it, or metadata that cannot
change an answer (the answer is the same with and without it). A field a new SDK adds fails
``test_every_sdk_field_is_classified`` until it is classified here, served or refused by the server, and listed
in docs/serve.md.

Runs on the embedded SmolLM2 (transformers); the fields' effects on both backends are in
tests/test_serve_choices.py and tests/test_logit_rules.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
pytest.importorskip("openai")

from support.server import LiveServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "adapters"
ASK = "Repeat the word 'cat' five times."
PROMPT = "List the numbers from one to ten, separated by commas."
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}

#: Refused: a value that would change the answer if it were served.
REFUSED = {
    "chat": {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
             "reasoning_effort": "high", "verbosity": "low", "web_search_options": {},
             "moderation": {"model": "omni-moderation-latest"},
             "functions": [TOOL["function"]], "function_call": "auto"},  # OpenAI's deprecated forms of tools
    "completion": {"suffix": "and that is all.", "best_of": 2},
}
#: Metadata: accepted, unused, and the answer is the same.
METADATA = {
    "chat": {"user": "u-1", "safety_identifier": "h-1", "metadata": {"k": "v"}, "store": True, "service_tier": "auto",
             "prompt_cache_key": "k", "prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": "24h"},
             "prediction": {"type": "content", "content": "cat cat cat"}},
    "completion": {"user": "u-1"},
}
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


def _sdk_fields(kind: str) -> set[str]:
    if kind == "chat":
        from openai.types.chat import completion_create_params as params
    else:
        from openai.types import completion_create_params as params
    return set(params.CompletionCreateParamsBase.__annotations__) | set(
        params.CompletionCreateParamsStreaming.__annotations__)


@pytest.fixture(scope="module")
def server(smollm2_engine):
    from adaptrix.serve.app import ServeOptions, create_app

    app = create_app(lambda: smollm2_engine, ServeOptions(adapters_dir=str(EXAMPLES)))
    loaded = "pirate_style" in smollm2_engine.adapters.loaded_names()
    smollm2_engine.load_adapter(str(EXAMPLES / "pirate_style"), activate=False)  # the engine's own folder is not EXAMPLES
    try:
        with LiveServer(app) as srv:
            yield srv
    finally:
        if not loaded:
            smollm2_engine.unload_adapter("pirate_style")


def _base(kind: str, **extra) -> dict:
    body = {"model": "base", "max_tokens": 8, "temperature": 0}
    body.update({"messages": [{"role": "user", "content": ASK}]} if kind == "chat" else {"prompt": PROMPT})
    return {**body, **extra}


def _post(server, kind, body, status=200):
    r = httpx.post(server.url + PATHS[kind], json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def _text(out, i=0) -> str:
    choice = out["choices"][i]
    return choice["message"]["content"] if "message" in choice else choice["text"]


_ANSWERS: dict[str, str] = {}


def _answer(server, kind, **extra) -> str:
    """The answer's text; requests are greedy or seeded, so one body's answer is asked once."""
    body = _base(kind, **extra)
    key = json.dumps([kind, body], sort_keys=True)
    if key not in _ANSWERS:
        _ANSWERS[key] = _text(_post(server, kind, body))
    return _ANSWERS[key]


def _sse(server, kind, body) -> list[dict]:
    with httpx.stream("POST", server.url + PATHS[kind], json=body, timeout=300) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")
                and line != "data: [DONE]"]


# -- what each served field does, shown by a request ------------------------------------------------------


def _model(server, kind):
    assert _answer(server, kind, model="pirate_style") != _answer(server, kind)


def _input(server, kind):
    other = ({"messages": [{"role": "user", "content": "Name a color."}]} if kind == "chat"
             else {"prompt": "The capital of France is"})
    assert _text(_post(server, kind, {**_base(kind), **other})) != _answer(server, kind)


def _max_tokens(name):
    def check(server, kind):
        out = _post(server, kind, _base(kind, **{name: 3}))
        assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "length"
    return check


def _temperature(server, kind):
    greedy = _answer(server, kind)
    assert any(_answer(server, kind, temperature=1.5, seed=s) != greedy for s in range(2))


def _top_p(server, kind):
    greedy = _answer(server, kind)
    seeds = [s for s in range(2) if _answer(server, kind, temperature=1.5, seed=s, top_p=1.0) != greedy][:1]
    assert seeds and all(_answer(server, kind, temperature=1.5, seed=s, top_p=1e-6) == greedy for s in seeds)


def _seed(server, kind):
    one = _answer(server, kind, temperature=1.0, seed=1)
    assert _answer(server, kind, temperature=1.0, seed=1) == one
    assert any(_answer(server, kind, temperature=1.0, seed=s) != one for s in range(2, 4))


def _stop(server, kind):
    full = _answer(server, kind)
    word = re.findall(r"[A-Za-z]{3,}", full)[1]
    cut = _answer(server, kind, stop=[word])
    assert cut == full[:full.index(word)].rstrip() or cut == full[:full.index(word)]


def _stream(server, kind):
    chunks = _sse(server, kind, _base(kind, stream=True))
    key = "delta" if kind == "chat" else None
    text = "".join((c["choices"][0]["delta"].get("content") or "") if key else c["choices"][0]["text"]
                   for c in chunks)
    assert text.strip() == _answer(server, kind).strip() and len(chunks) > 2


def _stream_options(server, kind):
    chunks = _sse(server, kind, _base(kind, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def _n(server, kind):
    out = _post(server, kind, _base(kind, n=2))
    assert [c["index"] for c in out["choices"]] == [0, 1] and _text(out, 0) == _text(out, 1)


def _logprobs(server, kind):
    out = _post(server, kind, _base(kind, logprobs=True if kind == "chat" else 1))
    lp = out["choices"][0]["logprobs"]
    assert lp is not None and len(lp["content"] if kind == "chat" else lp["tokens"]) == \
        out["usage"]["completion_tokens"]


def _top_logprobs(server, kind):
    out = _post(server, kind, _base(kind, logprobs=True, top_logprobs=3))
    assert all(len(entry["top_logprobs"]) == 3 for entry in out["choices"][0]["logprobs"]["content"])


def _logit_bias(server, kind):
    first = _post(server, kind, _base(kind, max_tokens=1, logprobs=True if kind == "chat" else 0))
    lp = first["choices"][0]["logprobs"]
    token = lp["content"][0]["token"] if kind == "chat" else lp["tokens"][0]
    ids = httpx.post(server.url + "/tokenize", json={"prompt": token, "add_special_tokens": False}).json()["tokens"]
    banned = _answer(server, kind, logit_bias={str(ids[0]): -100})
    assert not banned.startswith(token.strip() or token) or banned != _answer(server, kind)


def _penalty(name):
    def check(server, kind):
        assert _answer(server, kind, **{name: 2.0}) != _answer(server, kind)
    return check


def _response_format(server, kind):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    out = _answer(server, kind, max_tokens=16,
                  response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    assert list(json.loads(out)) == ["n"] and json.loads(out) != _answer(server, kind, max_tokens=16)


def _tools(server, kind):
    out = _post(server, kind, _base(kind, max_tokens=120, tools=[TOOL], tool_choice="required"))
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"


def _tool_choice(server, kind):
    out = _post(server, kind, _base(kind, max_tokens=120, tools=[TOOL], tool_choice={"type": "function",
                                                                                     "function": {"name": "f"}}))
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"
    assert _answer(server, kind, tools=[TOOL], tool_choice="none") == _answer(server, kind)


def _parallel_tool_calls(server, kind):
    two = {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}
    out = _post(server, kind, _base(kind, max_tokens=120, tools=[TOOL, two], tool_choice="required",
                                     parallel_tool_calls=False))
    assert len(out["choices"][0]["message"]["tool_calls"]) == 1


def _echo(server, kind):
    assert _answer(server, kind, echo=True) == PROMPT + _answer(server, kind)


EFFECTS = {
    "model": _model, "messages": _input, "prompt": _input, "max_tokens": _max_tokens("max_tokens"),
    "max_completion_tokens": _max_tokens("max_completion_tokens"), "temperature": _temperature, "top_p": _top_p,
    "seed": _seed, "stop": _stop, "stream": _stream, "stream_options": _stream_options, "n": _n,
    "logprobs": _logprobs, "top_logprobs": _top_logprobs, "logit_bias": _logit_bias,
    "presence_penalty": _penalty("presence_penalty"), "frequency_penalty": _penalty("frequency_penalty"),
    "echo": _echo, "response_format": _response_format, "tools": _tools, "tool_choice": _tool_choice,
    "parallel_tool_calls": _parallel_tool_calls,
}


def _served(kind: str) -> set[str]:
    return _sdk_fields(kind) - set(REFUSED[kind]) - set(METADATA[kind])


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_every_sdk_field_is_classified(kind):
    unclassified = sorted(_served(kind) - set(EFFECTS))
    assert not unclassified, (f"the openai SDK's {kind} params have fields nobody classified: {unclassified}; "
                              "serve it (and show its effect in EFFECTS), refuse it in serve/schemas.UNSERVED, "
                              "or list it as metadata in serve/fields.METADATA, then in docs/serve.md")


CASES = [(kind, name) for kind in ("chat", "completion") for name in sorted(_served(kind) & set(EFFECTS))]


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_a_served_field_changes_the_answer(server, kind, name):
    EFFECTS[name](server, kind)


REFUSALS = [(kind, name, value) for kind in REFUSED for name, value in REFUSED[kind].items()]


@pytest.mark.parametrize("kind, name, value", REFUSALS, ids=[f"{k}-{n}" for k, n, _ in REFUSALS])
def test_a_refused_field_is_a_400_naming_it(server, kind, name, value):
    err = _post(server, kind, _base(kind, **{name: value}), 400)["error"]
    assert err["param"] == name and f"'{name}'" in err["message"]


METAS = [(kind, name, value) for kind in METADATA for name, value in METADATA[kind].items()]


@pytest.mark.parametrize("kind, name, value", METAS, ids=[f"{k}-{n}" for k, n, _ in METAS])
def test_metadata_is_accepted_and_changes_nothing(server, kind, name, value):
    assert _answer(server, kind, **{name: value}) == _answer(server, kind)


def test_a_field_no_one_knows_is_a_400_naming_it(server):
    for kind in PATHS:
        err = _post(server, kind, _base(kind, temprature=0.5), 400)["error"]
        assert err["param"] == "temprature" and err["code"] == "unknown_field"
    err = _post(server, "completion", _base("completion", messages=[]), 400)["error"]
    assert err["param"] == "messages"  # a chat field sent to /v1/completions is not ignored either


def test_docs_list_every_field_with_its_status():
    text = (ROOT / "docs" / "serve.md").read_text()
    section = text[text.index("## Request fields"):]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)` \| ([^|]+)\|", section, re.M)}
    for kind in PATHS:
        for name in _sdk_fields(kind):
            assert name in rows, f"docs/serve.md's request-field table has no row for {name!r}"
            status = rows[name].lower()
            if name in METADATA[kind]:
                assert "metadata" in status, name
            elif name in REFUSED[kind] and name not in REFUSED["chat" if kind == "completion" else "completion"]:
                assert "refused" in status or "issue 18" in status, name
