"""Tool calling, owned by the family (issue 18 item 2): the formats against the families' real chat templates,
the grammar that forces a call against llguidance with a real tokenizer, the streamed detection, and the
checks of tools and tool turns. No model runs here (see test_tools_engine.py and test_tools_serve.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptrix.errors import GenerationError, ToolError
from adaptrix.generation.chat_template import render_chat_template
from adaptrix.generation.request import GenerationRequest
from adaptrix.plugins.host import get_host
from adaptrix.generation.tools.format import GENERIC
from adaptrix.generation.tools.messages import split_messages
from adaptrix.generation.tools.spec import check_tool_use
from adaptrix.generation.tools.stream import CallArguments, CallHead, ToolStream

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}

#: family -> a real chat template of it that writes assistant tool calls (../shared/fixtures/chat-templates).
TEMPLATES = {
    "qwen": "qwen2.5-7b-instruct.jinja",
    "llama": "llama-3.1-8b-instruct.jinja",
    "mistral": "mistral-7b-instruct-v0.3-tools.jinja",
    "deepseek": "deepseek-r1.jinja",
}


def fmt(family: str):
    answer, _ = get_host().call_family("tool_format", family, config=None, template=None)
    return answer


def template(fixtures_dir: Path, name: str) -> str:
    return (fixtures_dir / "chat-templates" / name).read_text()


def call_message(calls):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for i, (n, a) in enumerate(calls)]}


# -- each family's format reads what its own template writes ------------------------------------------------
@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_the_family_parses_the_calls_its_own_template_writes(fixtures_dir, family):
    """The oracle is the model's template: it writes an assistant's tool_calls as the model was trained to
    write them. The family's format must read exactly those calls back out of that text."""
    source = template(fixtures_dir, TEMPLATES[family])
    f = fmt(family)
    user = [{"role": "user", "content": "Weather in Paris?"}]
    messages, _ = f.render(user + [call_message([("get_weather", {"city": "Paris", "days": 2})])], None, source)
    head = render_chat_template(source, user, add_generation_prompt=True, special_tokens=SPECIAL)
    full = render_chat_template(source, messages, add_generation_prompt=False, special_tokens=SPECIAL)
    assert full.startswith(head)
    answer = full[len(head):]
    parsed = f.parse(answer)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "Paris", "days": 2})]
    assert "get_weather" not in parsed.content


@pytest.mark.parametrize("family,text", [
    ("qwen", 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'),
    ("llama", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
              '{"name": "add", "parameters": {"a": 1, "b": 2}}'),
    ("llama", '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 1, "b": 2}}'),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}, '
                '{"name": "add", "arguments": {"a": 1, "b": 2}}]'),
    ("mistral", '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]'),
    ("phi", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "add", "arguments": {"a": 1, "b": 2}}]<|/tool_call|>'),
    ("phi", '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]'),
    ("deepseek", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
                 '{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n'
                 '{"a": 1, "b": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'),
    ("gemma", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>'),
])
def test_each_family_parses_several_calls_in_its_format(family, text):
    parsed = fmt(family).parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "Paris"}),
                                                                         ("add", {"a": 1, "b": 2})]
    assert parsed.content == ("Let me look." if text.startswith("Let") else "")
    assert len({c.id for c in parsed.calls}) == 2 and all(c.id.startswith("call_") for c in parsed.calls)


@pytest.mark.parametrize("family", ["qwen", "llama", "mistral", "phi", "deepseek", "gemma"])
@pytest.mark.parametrize("text", [
    "The weather in Paris is sunny.",
    '{"city": "Paris"}',
    '[1, 2, 3]',
    'I would call <tool_call> but I will not.',
    '{"name": "Bob", "age": 3}',
])
def test_text_that_is_not_a_call_stays_content(family, text):
    parsed = fmt(family).parse(text)
    assert parsed.calls == () and parsed.content == text


def test_families_have_their_own_formats_and_gemma_the_generic_one():
    names = {f: fmt(f).name for f in ("qwen", "llama", "mistral", "phi", "deepseek", "gemma", "generic")}
    assert names == {"qwen": "hermes", "llama": "llama3-json", "mistral": "mistral", "phi": "phi4",
                     "deepseek": "deepseek", "gemma": "json", "generic": "json"}


# -- rendering through the real templates ------------------------------------------------------------------
def _conversation():
    return [{"role": "user", "content": "Weather in Paris?"},
            call_message([("get_weather", {"city": "Paris"})]),
            {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": "22 C and sunny"}]


@pytest.mark.parametrize("family,name,marks", [
    ("qwen", "qwen2.5-7b-instruct.jinja", ["<tools>", '"get_weather"', "<tool_response>\n22 C and sunny"]),
    ("qwen", "qwen3-0.6b.jinja", ["<tools>", '"get_weather"', "<tool_response>\n22 C and sunny"]),
    ("llama", "llama-3.1-8b-instruct.jinja", ['"get_weather"', "ipython<|end_header_id|>", "22 C and sunny"]),
    ("mistral", "mistral-7b-instruct-v0.3-tools.jinja", ["[AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "22 C and sunny"]),
    ("mistral", "mistral-nemo-instruct-2407.jinja", ["[AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "22 C and sunny"]),
    ("deepseek", "deepseek-r1.jinja", ["get_weather", "<｜tool▁output▁begin｜>22 C and sunny"]),
    ("phi", "phi4-mini-3.8b.ollama-gguf.jinja", ['<|tool|>[{"name": "get_weather"', "22 C and sunny"]),
    ("gemma", "gemma3-270m.ollama-gguf.jinja", ["You can call these functions", "22 C and sunny"]),
    ("gemma", "gemma2-2b.ollama-gguf.jinja", ["<start_of_turn>user\nYou can call these functions", "22 C and sunny"]),
    ("llama", "smollm2-135m.ollama-gguf.jinja", ["You can call these functions", '"parameters": {"city": "Paris"}',
                                                  "22 C and sunny"]),
])
def test_tools_and_tool_turns_render_through_the_template(fixtures_dir, family, name, marks):
    """A conversation with a call and its result renders (the template takes what it knows; the rest is
    written as text), offers the tools, and ends with the assistant's turn open."""
    source = template(fixtures_dir, name)
    use = check_tool_use([WEATHER, ADD])
    messages, extra = fmt(family).render(_conversation(), use, source)
    text = render_chat_template(source, messages, add_generation_prompt=True, special_tokens=SPECIAL, **extra)
    for mark in marks:
        assert mark in text, (mark, text)
    assert '"add"' in text  # every tool is offered


def test_a_template_without_tools_gets_them_in_the_system_prompt(fixtures_dir):
    source = template(fixtures_dir, "smollm2-135m.ollama-gguf.jinja")
    use = check_tool_use([WEATHER])
    messages, extra = GENERIC.render([{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "hi"}], use, source)
    assert extra == {}
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]


# -- the grammar that forces a call ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_matcher(fixtures_dir):
    pytest.importorskip("llguidance")
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fixtures_dir / "tokenizers" / "qwen2.5-composite"))
    lt = llguidance.hf.from_tokenizer(tok)

    def accepts(grammar, text: str) -> bool:
        m = llguidance.LLMatcher(lt, llguidance.LLMatcher.grammar_from_lark(grammar.source), log_level=0)
        assert not m.is_error(), m.get_error()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return m.consume_tokens(ids) and not m.is_error() and m.is_accepting()

    def tag_ids(f):
        out = {}
        for tag in f.tags():
            ids = tok(tag, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                out[tag] = ids[0]
        return out

    return accepts, tag_ids


@pytest.mark.parametrize("family", ["qwen", "llama", "mistral", "phi", "deepseek", "gemma"])
def test_the_forced_grammar_takes_valid_calls_only(qwen_matcher, family):
    """llguidance (the engine the backends enforce grammars with) with a real tokenizer: the grammar of
    tool_choice required takes a call to an offered function with valid arguments, written the family's way,
    and refuses a wrong name, wrong argument types, a missing required argument and plain text."""
    accepts, tag_ids = qwen_matcher
    f = fmt(family)
    use = check_tool_use([WEATHER, ADD], "required")
    g = f.grammar(use, tag_ids(f))
    assert g.kind == "lark"
    assert accepts(g, f.write_calls([("get_weather", {"city": "Paris"})]))
    assert accepts(g, f.write_calls([("add", {"a": 1, "b": 2})]))
    assert not accepts(g, f.write_calls([("get_time", {"city": "Paris"})]))
    assert not accepts(g, f.write_calls([("add", {"a": "one", "b": 2})]))
    assert not accepts(g, f.write_calls([("get_weather", {"days": 2})]))
    assert not accepts(g, "The weather is fine.")
    several = f.write_calls([("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})])
    assert accepts(g, several) == f.parallel
    assert not accepts(f.grammar(check_tool_use([WEATHER, ADD], "required", False), tag_ids(f)), several)
    named = f.grammar(check_tool_use([WEATHER, ADD], {"type": "function", "function": {"name": "add"}}), tag_ids(f))
    assert accepts(named, f.write_calls([("add", {"a": 1, "b": 2})]))
    assert not accepts(named, f.write_calls([("get_weather", {"city": "Paris"})]))


def test_a_forced_call_closes_a_thought_the_prompt_opened(qwen_matcher):
    accepts, tag_ids = qwen_matcher
    f = fmt("qwen")
    g = f.grammar(check_tool_use([WEATHER], "required"), tag_ids(f), prefix="</think>")
    call = f.write_calls([("get_weather", {"city": "Paris"})])
    assert accepts(g, "</think>\n\n" + call)
    assert not accepts(g, call) and not accepts(g, "Let me think.</think>\n\n" + call)


def test_what_the_grammar_forces_parses_back(qwen_matcher):
    for family in ("qwen", "llama", "mistral", "phi", "deepseek", "gemma"):
        f = fmt(family)
        text = f.write_calls([("add", {"a": 1, "b": 2})])
        assert [(c.name, json.loads(c.arguments)) for c in f.parse(text).calls] == [("add", {"a": 1, "b": 2})]


# -- streaming --------------------------------------------------------------------------------------------
def _stream(f, text: str, size: int):
    """Feed ``text`` in pieces of ``size``: the content, and the calls as a client rebuilds them (a head, then
    its argument pieces; or a whole call)."""
    s = ToolStream(f)
    events = []
    for i in range(0, len(text), size):
        events.extend(s.feed(text[i:i + size]))
    events.extend(s.finish())
    content = "".join(e for e in events if isinstance(e, str))
    built: dict[str, list] = {}
    for e in events:
        if isinstance(e, CallHead):
            built[e.id] = [e.name, ""]
        elif isinstance(e, CallArguments):
            built[e.id][1] += e.text
        elif not isinstance(e, str):
            built[e.id] = [e.name, e.arguments]
    calls = [(name, json.loads(args)) for name, args in built.values()]
    assert [c.id for c in s.calls] == list(built)  # the calls the stream recorded are the ones it sent
    return content, calls, events


@pytest.mark.parametrize("family,text", [
    ("qwen", 'Sure <b>now</b>: <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    ("llama", '{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "get_weather", "parameters": {"city": "Paris"}}'),
    ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}, '
                '{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ("deepseek", 'ok<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{"a": 1, "b": 2}\n```'
                 '<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
                 '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'),
])
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_a_stream_finds_the_calls_parse_finds(family, text, size):
    f = fmt(family)
    content, calls, _ = _stream(f, text, size)
    parsed = f.parse(text)
    assert calls == [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Paris"})]
    assert content.strip() == parsed.content


def test_a_stream_sends_the_name_first_then_the_arguments_as_they_come():
    s = ToolStream(fmt("qwen"))
    assert s.feed("Hello <") == ["Hello "]  # '<' may open <tool_call>: held
    assert s.feed("b> there ") == ["<b> there "]
    assert s.feed("<tool_call>\n{\"name\": \"add\", ") == []
    assert s.feed('"arguments": ') == []
    head, first = s.feed('{"a": 1')
    assert isinstance(head, CallHead) and head.name == "add"  # the name first, then the arguments
    assert first == CallArguments(head.id, '{"a": 1')
    assert s.feed(', "b": 2}') == [CallArguments(head.id, ', "b": 2}')]
    assert s.feed("}\n</tool") == []
    assert s.feed("_call> bye") == [" bye"]
    assert s.finish() == []
    assert [(c.id, c.name, json.loads(c.arguments)) for c in s.calls] == [(head.id, "add", {"a": 1, "b": 2})]


def test_a_stream_releases_text_that_only_looked_like_a_call():
    content, calls, _ = _stream(fmt("llama"), '{"city": "Paris"} is JSON', 2)
    assert calls == [] and content == '{"city": "Paris"} is JSON'
    content, calls, _ = _stream(fmt("qwen"), "a <tool_call> that never closes", 4)
    assert calls == [] and content == "a <tool_call> that never closes"


# -- checks: tools, choice, tool turns ----------------------------------------------------------------------
@pytest.mark.parametrize("tools,choice,param", [
    ({"type": "function"}, None, "tools"),
    ([{"type": "retrieval"}], None, "tools[0].type"),
    ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}], None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None,
     "tools[0].function.parameters.type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "thing"}}}}}],
     None, "tools[0].function.parameters.properties.x.type"),
    ([WEATHER, WEATHER], None, "tools[1].function.name"),
    ([WEATHER], "sometimes", "tool_choice"),
    ([WEATHER], {"type": "function", "function": {"name": "add"}}, "tool_choice.function.name"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_name_the_field(tools, choice, param):
    with pytest.raises(ToolError) as info:
        check_tool_use(tools, choice)
    assert info.value.param == param and param.split(".")[-1].split("[")[0] in str(info.value)


def test_tool_choice_none_offers_nothing_and_defaults_are_auto_and_parallel():
    assert check_tool_use([WEATHER], "none") is None
    use = check_tool_use([WEATHER])
    assert (use.choice, use.parallel, use.forced) == ("auto", True, False)
    assert check_tool_use([WEATHER], "required").forced


def test_history_takes_tool_turns():
    """Before issue 18 history took only user/assistant messages with content: a tool turn was refused."""
    req = GenerationRequest.build("thanks", history=_conversation())
    assert [m["role"] for m in req.history] == ["user", "assistant", "tool"]
    assert req.history[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    with pytest.raises(GenerationError, match="tool_call_id"):
        GenerationRequest.build("thanks", history=[{"role": "tool", "content": "22 C"}])


def test_messages_may_end_with_a_tool_result():
    chat = split_messages([{"role": "system", "content": "Be brief."}, *_conversation()])
    assert chat.prompt == "22 C and sunny" and chat.system == "Be brief."
    assert chat.prompt_message == {"role": "tool", "tool_call_id": "call_0", "name": "get_weather"}
    assert [m["role"] for m in chat.history] == ["user", "assistant"]
    with pytest.raises(ToolError) as info:
        split_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert info.value.param == "messages[1].role"


# -- a third-party family brings its own format --------------------------------------------------------------
class _Tok:
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"


def test_a_third_party_plugin_adds_its_own_format():
    """A family plugin outside adaptrix gives its format with the tool_format hook; a family that says nothing
    gets the generic one, and an answer that is not a ToolFormat names the plugin."""
    import attrs

    from adaptrix import hookimpl
    from adaptrix.errors import PluginError
    from adaptrix.plugins.host import PluginHost
    from adaptrix.session import ask_tool_format
    from adaptrix.generation.tools import ToolFormat

    @attrs.frozen
    class FunctionTag(ToolFormat):
        name: str = "function-tag"
        open_tag: str = "<function>"
        close_tag: str = "</function>"
        padding: str = ""

    class Mine:
        @hookimpl
        def detect_family(self, config):
            return (config or {}).get("model_type") if (config or {}).get("model_type") in ("mine", "bad") else None

        @hookimpl
        def tool_format(self, family, template):
            assert template == _Tok.chat_template  # the tokenizer's template reaches the family
            return FunctionTag() if family == "mine" else "not a format"

    class Silent:
        @hookimpl
        def detect_family(self, config):
            return "silent" if (config or {}).get("model_type") == "silent" else None

    host = PluginHost(environ={}, strict=True)
    host.register(Mine(), "mine")
    host.register(Silent(), "silent")
    for kind in ("mine", "bad", "silent"):
        host.detect("x", {"model_type": kind})
    f = ask_tool_format(host, "mine", None, _Tok())
    assert f.name == "function-tag"
    parsed = f.parse('ok <function>{"name": "add", "arguments": {"a": 1}}</function>')
    assert (parsed.content, [c.name for c in parsed.calls]) == ("ok", ["add"])
    assert ask_tool_format(host, "silent", None, _Tok()) is GENERIC
    assert host.call_family("tool_format", "silent", config=None, template=None)[0] is GENERIC
    with pytest.raises(PluginError, match=r"plugin 'mine': hook tool_format\('bad'\) must return an adaptrix "
                                          r"ToolFormat"):
        ask_tool_format(host, "bad", None, _Tok())


def test_a_tool_may_return_nothing():
    req = GenerationRequest.build("", history=_conversation()[:2], prompt_message={"role": "tool", "tool_call_id": "call_0"})
    assert req.prompt == "" and req.prompt_message == {"role": "tool", "tool_call_id": "call_0"}
    with pytest.raises(GenerationError, match="empty"):
        GenerationRequest.build("", history=_conversation()[:2])


@pytest.mark.parametrize("size", [1, 2, 5])
def test_a_stream_follows_arguments_with_brackets_and_quotes_in_strings(size):
    args = {"code": 'if (a[0] == "}") { x(\'{\') }\n', "n": [1, {"b": [2, "]"]}], "s": "\\\\\""}
    text = '<tool_call>\n{"name": "run", "arguments": ' + json.dumps(args) + '}\n</tool_call> done'
    content, calls, events = _stream(fmt("qwen"), text, size)
    assert calls == [("run", args)] and content.strip() == "done"
    assert isinstance(events[0], CallHead) and sum(isinstance(e, CallArguments) for e in events) > 3
