"""How a family's models write tool calls: :class:`ToolFormat`, and the generic JSON fallback.

A format answers four questions, the same way on every backend:

- **render**: the messages and template variables a conversation with tools becomes. A chat template that
  knows tools (it reads ``tools``) gets them as ``tools=``; one that does not gets the format's
  :meth:`ToolFormat.instructions` in the system prompt, earlier calls written as the assistant's text and
  tool results as user turns.
- **parse**: the calls in an output, and the text that is not a call (``content``).
- **grammar**: the :class:`~adaptrix.generation.grammar.Grammar` (Lark with ``%json``) that forces a call
  for ``tool_choice: "required"`` or a named function: the format's literal tags around a JSON call whose
  ``name`` is an offered function and whose arguments follow that function's ``parameters``.
- **stream**: the strings whose start may open a call (:meth:`ToolFormat.openers`), so a streamed output is
  buffered from there (:mod:`adaptrix.generation.tools.stream`).

The base class is a "tagged JSON" format, configured by its fields: ``open_tag`` + a JSON call object (or a
list of them) + ``close_tag``. Most families only set fields (Qwen's hermes ``<tool_call>``, Mistral's
``[TOOL_CALLS]``, Llama's bare JSON); one whose calls are not JSON objects (DeepSeek) overrides
:meth:`scan`, :meth:`call_rule` and :meth:`write_calls`. :data:`GENERIC` is the core's fallback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from typing import Any, Mapping, Sequence

import attrs

from adaptrix.errors import ChatTemplateError
from adaptrix.generation.chat_template import render_chat_template
from adaptrix.generation.grammar import Grammar
from adaptrix.generation.tools.calls import ParsedOutput, ToolCall, call_from_json
from adaptrix.generation.tools.spec import ToolSpec, ToolUse

_NOTHING = object()


@attrs.frozen
class Segment:
    """A call found in a text: ``text[start:end]`` is the call's text; ``calls`` what it holds."""

    start: int
    end: int
    calls: tuple[ToolCall, ...]


@attrs.frozen
class ToolFormat:
    """A family's tool-call format (see the module docstring). Frozen: one instance serves every request."""

    #: The format's name (``hermes``, ``llama3-json``, ...), shown by ``get_model_info`` and the docs.
    name: str = "json"
    #: Text that opens a call (``<tool_call>``); the call's JSON follows it.
    open_tag: str = "<tool_call>"
    #: Text that closes a call (``</tool_call>``); ``""``: the JSON's end closes it.
    close_tag: str = "</tool_call>"
    #: The key of the arguments object in a call (``arguments``; Llama 3's is ``parameters``).
    arguments_key: str = "arguments"
    #: The JSON after the tag is a list of calls (``[TOOL_CALLS] [{...}, {...}]``), not one call per tag.
    list_body: bool = False
    #: A call's JSON counts without its tag at the start of the output (and right after a call): for tags that
    #: are special tokens, which decoding drops. Forced calls (the grammar) are then written without the tag.
    bare_calls: bool = False
    #: Between two calls (several tags, or a list's items).
    separator: str = "\n"
    #: Around a call's JSON inside its tags (hermes writes ``<tool_call>\n{...}\n</tool_call>``).
    padding: str = "\n"
    #: The model writes several calls in one answer (``parallel_tool_calls``); ``False``: one at most.
    parallel: bool = True
    #: How earlier calls' arguments reach a template that knows tools: ``"object"`` (a dict, what most
    #: templates ``tojson``) or ``"string"`` (the JSON text, for templates that concatenate it).
    history_arguments: str = "object"
    #: Call ids reach the template as 9 letters and digits (:meth:`history_id`).
    short_ids: bool = False

    # -- rendering ------------------------------------------------------------------------------------------
    def template_knows_tools(self, template: str | None) -> bool:
        """Whether the chat template renders the ``tools`` variable itself."""
        return bool(template) and "tools" in template

    def template_knows_calls(self, template: str | None) -> bool:
        """Whether the chat template renders an assistant message's ``tool_calls``."""
        return bool(template) and "tool_calls" in template

    def template_knows_results(self, template: str | None) -> bool:
        """Whether the chat template renders ``role: "tool"`` messages."""
        return bool(template) and ("'tool'" in template or '"tool"' in template)

    def render(self, messages: Sequence[Mapping[str, Any]], use: ToolUse | None,
               template: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """``(messages, template variables)`` for a conversation (tool turns included) offering ``use``'s tools.

        ``messages`` are OpenAI-style: assistant ``tool_calls`` with JSON-text arguments, ``role: "tool"``.
        What the template does not render itself is written as text: earlier calls in this format, tool
        results as a user turn, the tools as :meth:`instructions` in the system prompt."""
        calls_ok, results_ok = self.template_knows_calls(template), self.template_knows_results(template)
        out: list[dict[str, Any]] = []
        merge = False
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):
                m = self.template_message(m) if calls_ok else self.calls_as_text(m)
            elif m.get("role") == "tool" and results_ok:
                m = self.template_message(m)
            elif m.get("role") == "tool":
                text = self.tool_result_text(m)
                if merge:  # several results answer one turn: one user message (templates want alternation)
                    out[-1]["content"] += "\n" + text
                    continue
                m, merge = {"role": "user", "content": text}, True
                out.append(m)
                continue
            merge = False
            out.append(m)
        if use is None:
            return out, {}
        return self.offer(out, use, template)

    def offer(self, messages: list[dict[str, Any]], use: ToolUse,
              template: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Offer ``use``'s tools: as the template's ``tools`` variable when it renders them, else as
        :meth:`instructions` in the system prompt."""
        if self.template_knows_tools(template):
            return messages, {"tools": [t.as_openai() for t in use.tools]}
        text = self.instructions(use.tools)
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]], {}
        if template and not takes_system(template):  # Gemma 2: the first user message carries them
            first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first is not None:
                m = messages[first]
                return [*messages[:first], {**m, "content": f"{text}\n\n{m['content']}"}, *messages[first + 1:]], {}
        return [{"role": "system", "content": text}, *messages], {}

    def calls_as_text(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """An assistant message's ``tool_calls`` written into its content in this format."""
        m = dict(message)
        calls = [c["function"] for c in m.pop("tool_calls")]
        text = self.write_calls([(c["name"], _arguments(c.get("arguments"))) for c in calls])
        m["content"] = ((m.get("content") or "") + "\n" + text).strip()
        return m

    def template_message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """One message as templates that know tools expect it (transformers' convention: arguments as a
        dict, unless :attr:`history_arguments` says text)."""
        m = dict(message)
        if m.get("content") is None:
            m["content"] = ""  # templates concatenate it (DeepSeek) or test it (Qwen); None would be undefined
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "id": self.history_id(c.get("id")),
                 "function": {**c["function"], "arguments": self._history_args(c["function"].get("arguments"))}}
                for c in m["tool_calls"]
            ]
        if m.get("role") == "tool" and m.get("tool_call_id") is not None:
            m["tool_call_id"] = self.history_id(m["tool_call_id"])
        return m

    def history_id(self, call_id: str | None) -> str | None:
        """A call's id as the template gets it: as given, or (``short_ids``) 9 letters and digits derived
        from it, the same for the call and its result (Mistral's templates refuse other ids)."""
        if not self.short_ids or call_id is None:
            return call_id
        digest = hashlib.sha256(call_id.encode()).digest()
        alphabet = string.ascii_letters + string.digits
        return "".join(alphabet[b % len(alphabet)] for b in digest[:9])

    def _history_args(self, arguments: Any) -> Any:
        args = _arguments(arguments)
        return json.dumps(args, ensure_ascii=False) if self.history_arguments == "string" else args

    def instructions(self, tools: Sequence[ToolSpec]) -> str:
        """The system-prompt text that offers ``tools`` to a model whose template does not render them."""
        listing = "\n".join(json.dumps(t.as_openai()["function"], ensure_ascii=False) for t in tools)
        example = self.write_calls([("function_name", {"argument": "value"})])
        return ("You can call these functions (each with the JSON Schema of its arguments):\n"
                f"{listing}\n\nTo call a function, answer with exactly:\n{example}\n"
                "one call per function to call, nothing else. Otherwise answer normally.")

    def write_calls(self, calls: Sequence[tuple[str, Any]]) -> str:
        """``[(name, arguments dict)]`` written in this format (an earlier turn's calls, the instructions)."""
        bodies = [json.dumps({"name": n, self.arguments_key: a}, ensure_ascii=False) for n, a in calls]
        # Tags that are special tokens (bare_calls) are not text the model reads back: write the bare JSON.
        tag_open, tag_close, pad = ("", "", "") if self.bare_calls else (self.open_tag, self.close_tag, self.padding)
        if self.list_body:
            return f"{tag_open}{pad}[{', '.join(bodies)}]{tag_close}"
        return self.separator.join(f"{tag_open}{pad}{b}{pad}{tag_close}" for b in bodies)

    def tool_result_text(self, message: Mapping[str, Any]) -> str:
        """A ``role: "tool"`` message as user text, for templates that know no tool role."""
        return f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"

    # -- parsing -------------------------------------------------------------------------------------------
    def parse(self, text: str) -> ParsedOutput:
        """The calls in ``text`` and the rest as ``content`` (stripped; ``""`` when only calls)."""
        parts, calls, pos = [], [], 0
        for seg in self.scan(text):
            parts.append(text[pos:seg.start])
            calls.extend(seg.calls)
            pos = seg.end
        parts.append(text[pos:])
        return ParsedOutput("".join(parts).strip() if calls else text, tuple(calls))

    def scan(self, text: str) -> list[Segment]:
        """Every call in ``text``, in order (what :meth:`parse` removes from the content)."""
        found: list[Segment] = []
        pos, bare = 0, self.bare_calls
        while pos < len(text):
            start = _skip(text, pos, " \t\r\n;," if found else " \t\r\n")
            seg = None
            if bare and (pos == 0 or (found and found[-1].end == pos)):
                seg = self._call_at(text, pos if found else start, start)  # separators go with the call
            if seg is None:
                at = text.find(self.open_tag, pos) if self.open_tag else -1
                if at < 0:
                    break
                seg = self._call_at(text, at, at + len(self.open_tag))
                if seg is None:
                    pos = at + len(self.open_tag)
                    continue
            found.append(seg)
            pos = seg.end
        return found

    def _call_at(self, text: str, start: int, body: int) -> Segment | None:
        value, end = _decode(text, _skip(text, body))
        if value is _NOTHING:
            return None
        items = value if self.list_body and isinstance(value, list) else [value]
        if self.list_body and not isinstance(value, list) and not self.bare_calls:
            return None
        calls = [call_from_json(v, (self.arguments_key, "arguments", "parameters")) for v in items]
        if not calls or any(c is None for c in calls):
            return None
        if self.close_tag:
            after = _skip(text, end)
            if text.startswith(self.close_tag, after):
                end = after + len(self.close_tag)
        return Segment(start, end, tuple(calls))

    def partial_calls(self, text: str) -> list[tuple[str, str]]:
        """The calls being written at the start of ``text`` (a call's text, not yet whole), as far as they go:
        ``(name, the arguments' JSON text so far)`` for each call whose name is written and whose arguments
        object has begun (a stream sends those pieces on). ``[]`` when none, or when the format cannot tell
        before a call is whole (arguments given as JSON text, a format that is not tagged JSON)."""
        pos = len(self.open_tag) if self.open_tag and text.startswith(self.open_tag) else 0
        pos = _skip(text, pos)
        if self.list_body:
            if not text.startswith("[", pos):
                return []
            pos = _skip(text, pos + 1)
        out: list[tuple[str, str]] = []
        while True:
            head = _HEAD.match(text, pos)
            if head is None or head.group(2) not in (self.arguments_key, "arguments", "parameters"):
                return out
            start = head.end()
            if not text.startswith("{", start):
                return out
            end = _value_end(text, start)
            out.append((head.group(1), text[start:end]))
            if end == len(text) or not self.list_body:
                return out
            pos = _skip(text, end)
            if not text.startswith("}", pos):
                return out
            pos = _skip(text, pos + 1)
            if not text.startswith(",", pos):
                return out
            pos = _skip(text, pos + 1)

    def complete(self, text: str, seg: Segment) -> bool:
        """Whether a call found at the start of a streamed ``text`` is whole (its close tag, if any, is in)."""
        return not self.close_tag or text[:seg.end].endswith(self.close_tag)

    def openers(self) -> tuple[str, ...]:
        """Texts whose start may open a call anywhere in an output (a stream holds them back)."""
        return (self.open_tag,) if self.open_tag else ()

    def bare_openers(self) -> tuple[str, ...]:
        """First characters of a call written without its tag (at the output's start, or after a call)."""
        if not self.bare_calls:
            return ()
        return ("[", "{") if self.list_body else ("{",)

    # -- forcing a call ------------------------------------------------------------------------------------
    def tags(self) -> tuple[str, ...]:
        """The literal tags the grammar writes; those that are one token of the vocabulary are given to
        :meth:`grammar` by id (grammar engines treat added tokens as special, not as their text)."""
        return tuple(t for t in (self.open_tag, self.close_tag) if t)

    def grammar(self, use: ToolUse, token_ids: Mapping[str, int] | None = None, prefix: str = "") -> Grammar:
        """The grammar that makes the output a call to one of ``use.offered()`` (several, when
        ``use.parallel``), with arguments valid against that function's ``parameters``. ``token_ids``: the
        tags (:meth:`tags`) that are single tokens, by id (written ``<[id]>``). ``prefix``: text written
        before the calls (the close of a thought the prompt opened: a forced call does not think)."""
        ids = dict(token_ids or {})
        tools = use.offered()
        rules = [f"fn{i}: {self.call_rule(t, ids)}" for i, t in enumerate(tools)]
        alternatives = " | ".join(f"fn{i}" for i in range(len(tools)))
        head = self.start_rules(use.parallel and self.parallel, ids)
        if prefix:
            head = [f"start: {lark_text(prefix, ids)} {lark_text(chr(10) * 2)} calls",
                    *(r.replace("start:", "calls:", 1) if r.startswith("start:") else r for r in head)]
        return Grammar.lark("\n".join([*head, f"call: {alternatives}", *rules]) + "\n",
                            name=use.function or "tool_call")

    def start_rules(self, parallel: bool, ids: Mapping[str, int]) -> list[str]:
        """The ``start`` rule around the ``call`` rule: tags, list brackets, one call or several."""
        tag_open, tag_close = ("", "") if self.bare_calls else (self.open_tag, self.close_tag)
        if self.list_body:
            body = 'call ("," call)*' if parallel else "call"
            return [" ".join(p for p in ("start:", lark_text(tag_open, ids), '"["', body, '"]"',
                                         lark_text(tag_close, ids)) if p)]
        pad = lark_text(self.padding) if tag_open else ""
        one = " ".join(p for p in (lark_text(tag_open, ids), pad, "call", pad, lark_text(tag_close, ids)) if p)
        if not parallel:
            return [f"start: {one}"]
        sep = lark_text(self.separator if not self.bare_calls else "; ")
        return [f"start: one ({sep} one)*", f"one: {one}"]

    def call_rule(self, tool: ToolSpec, ids: Mapping[str, int]) -> str:
        """The Lark body of one call to ``tool``: a ``%json`` schema fixing its name and arguments."""
        return "%json " + json.dumps(self.call_schema(tool), sort_keys=False)

    def call_schema(self, tool: ToolSpec) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"name": {"const": tool.name}, self.arguments_key: tool.parameters},
            "required": ["name", self.arguments_key],
            "additionalProperties": False,
        }


#: The core's fallback format: hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
#: offered through the template when it knows tools, else in the system prompt.
GENERIC = ToolFormat()


@functools.lru_cache(maxsize=32)
def takes_system(template: str) -> bool:
    """Whether a chat template renders a system message (Gemma 2's refuses one)."""
    try:
        render_chat_template(template, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    except ChatTemplateError:
        return False
    return True


def lark_text(text: str, ids: Mapping[str, int] | None = None) -> str:
    """``text`` as a Lark terminal: the token ``<[id]>`` when ``ids`` has it as one token, else a literal."""
    if not text:
        return ""
    if ids and text in ids:
        return f"<[{int(ids[text])}]>"
    return json.dumps(text)


def _skip(text: str, pos: int, chars: str = " \t\r\n") -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


_HEAD = re.compile(r'\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"(\w+)"\s*:\s*')


#: A whole JSON string, a bracket, or the quote of a string not closed yet.
_JSON_PARTS = re.compile(r'"(?=([^"\\]*(?:\\.[^"\\]*)*))\1"|[{}\[\]]|"')  # atomic (3.10): an open string is one pass


def _value_end(text: str, start: int) -> int:
    """Where the JSON object or array at ``text[start]`` ends (just after it), or ``len(text)`` when it has
    not ended yet. Strings are skipped whole by the regex, so a long argument costs no Python loop."""
    depth = 0
    for part in _JSON_PARTS.finditer(text, start):
        token = part.group()
        if token == '"':
            return len(text)  # a string still being written
        if token[0] == '"':
            continue
        depth += 1 if token in "{[" else -1
        if depth == 0:
            return part.end()
    return len(text)


def _decode(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value at ``text[pos:]`` and where it ends, or ``(_NOTHING, pos)``."""
    if pos >= len(text) or text[pos] not in "{[":
        return _NOTHING, pos
    try:
        return json.JSONDecoder().raw_decode(text, pos)
    except ValueError:
        return _NOTHING, pos


def _arguments(arguments: Any) -> Any:
    """An earlier call's arguments as a value: OpenAI sends JSON text; text that is not JSON stays text."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return {} if arguments is None else arguments
