"""A tool call the model wrote, and what parsing an output gives: the calls and the text that is not one."""

from __future__ import annotations

import json
import uuid
from typing import Any

import attrs


def new_call_id() -> str:
    """A fresh call id in OpenAI's shape (``call_`` and 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


@attrs.frozen
class ToolCall:
    """One call: OpenAI's ``{"id", "type": "function", "function": {"name", "arguments"}}``."""

    name: str
    #: The arguments as JSON text (OpenAI's form; ``json.loads`` it for the dict).
    arguments: str = "{}"
    id: str = attrs.field(factory=new_call_id)

    @property
    def parsed_arguments(self) -> Any:
        """The arguments decoded (a dict for a well-formed call)."""
        return json.loads(self.arguments)

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@attrs.frozen
class ParsedOutput:
    """An output split into its tool calls and the rest (``content``: the text that is not a call)."""

    content: str
    calls: tuple[ToolCall, ...] = ()


def call_from_json(value: Any, arguments_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    """A :class:`ToolCall` from a decoded ``{"name": ..., "arguments": {...}}`` object, or ``None`` when it is
    not one (no string name, arguments neither an object nor JSON text of one)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    key = next((k for k in arguments_keys if k in value), None)
    args = {} if key is None else value[key]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    extra = {"id"} | set(arguments_keys) | {"name", "type"}
    if set(value) - extra:
        return None
    return ToolCall(value["name"], json.dumps(args, ensure_ascii=False))  # a fresh id: models repeat theirs
