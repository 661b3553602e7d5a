"""OpenAI-style chat messages, tool turns included, checked and split into what a request is made of.

One owner for the server's ``messages`` and the library's ``Engine.chat(messages)`` / ``history=``:

- an assistant message may carry ``tool_calls`` (``[{"id", "type": "function", "function": {"name",
  "arguments"}}]``, arguments as JSON text) with ``content: null``;
- a ``role: "tool"`` message answers a call: ``content`` and ``tool_call_id`` (``name`` optional);
- the last message is what the model answers: a user message, or a tool result.

A message that does not fit raises :class:`~adaptrix.errors.ToolError` whose ``param`` names it
(``messages[2].tool_call_id``).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs

from adaptrix.errors import ToolError

ROLES = ("system", "developer", "user", "assistant", "tool")


@attrs.frozen
class Chat:
    """A conversation split for a request: the system prompt, earlier messages, and the current one."""

    #: The current message's text (a user message, or a tool result).
    prompt: str
    #: The current message's other fields when it is a tool result (``{"role": "tool", "tool_call_id"}``);
    #: ``None``: a user message.
    prompt_message: dict[str, Any] | None
    history: tuple[dict[str, Any], ...]
    system: str | None


def _plain_text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ToolError(f"'{param}' must be a string, got {type(value).__name__}", param)
    return value


def split_messages(messages: Any, text: Callable[[Any, str], str] = _plain_text, what: str = "messages") -> Chat:
    """Check ``messages`` and split them (see the module docstring); ``text(content, param)`` reads a
    message's content (the server's also takes a list of text parts)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ToolError(f"'{what}' must be a non-empty list of messages", what)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        param = f"{what}[{i}]"
        if not isinstance(m, dict):
            raise ToolError(f"'{param}' must be an object with 'role' and 'content', got {type(m).__name__}", param)
        role = m.get("role")
        if role not in ROLES:
            raise ToolError(f"'{param}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{param}.role")
        if role in ("system", "developer"):
            if turns:
                raise ToolError(f"'{param}' is a {role} message after the conversation started; put system "
                                "messages first", f"{param}.role")
            system.append(_content(m, param, text))
            continue
        turns.append(check_turn(m, param, text))
    last = turns[-1] if turns else None
    if last is None or last["role"] not in ("user", "tool"):
        raise ToolError("the last message must come from the user ('role': 'user') or be a tool result "
                        "('role': 'tool'): it is what the model answers", f"{what}[{len(messages) - 1}].role")
    if last["role"] == "user" and not last["content"].strip():
        raise ToolError(f"'{what}[{len(messages) - 1}].content' is empty; give the model some text to answer",
                        f"{what}[{len(messages) - 1}].content")
    current = {k: v for k, v in last.items() if k != "content"} if last["role"] == "tool" else None
    return Chat(last["content"], current, tuple(turns[:-1]), "\n\n".join(system) if system else None)


def check_turn(m: dict, param: str, text: Callable[[Any, str], str] = _plain_text) -> dict[str, Any]:
    """One user, assistant or tool message, normalized (tool calls' arguments as JSON text)."""
    role = m.get("role")
    if role == "assistant" and m.get("tool_calls"):
        calls = check_tool_calls(m["tool_calls"], f"{param}.tool_calls")
        content = None if m.get("content") is None else text(m["content"], f"{param}.content")
        return {"role": "assistant", "content": content, "tool_calls": calls}
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ToolError(f"'{param}.tool_call_id' is required: the id of the call this result answers",
                            f"{param}.tool_call_id")
        out = {"role": "tool", "content": _content(m, param, text), "tool_call_id": call_id}
        if m.get("name") is not None:
            out["name"] = _plain_text(m["name"], f"{param}.name")
        return out
    if role not in ("user", "assistant"):
        raise ToolError(f"'{param}.role' must be user, assistant or tool, got {role!r}", f"{param}.role")
    return {"role": role, "content": _content(m, param, text)}


def check_tool_calls(calls: Any, param: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``; arguments given as an object become JSON text."""
    if not isinstance(calls, list):
        raise ToolError(f"'{param}' must be a list of calls, got {type(calls).__name__}", param)
    out = []
    for i, call in enumerate(calls):
        p = f"{param}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ToolError(f"'{p}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                            f"\"arguments\"}}}}, got {call!r}"[:300], f"{p}.function")
        args = function.get("arguments", "{}")
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise ToolError(f"'{p}.id' must be a string, got {call_id!r}", f"{p}.id")
        out.append({"id": call_id or f"call_{i}", "type": "function",
                    "function": {"name": function["name"], "arguments": args}})
    return out


def _content(m: dict, param: str, text: Callable[[Any, str], str]) -> str:
    if m.get("content") is None:
        raise ToolError(f"'{param}.content' is required", f"{param}.content")
    return text(m["content"], f"{param}.content")
