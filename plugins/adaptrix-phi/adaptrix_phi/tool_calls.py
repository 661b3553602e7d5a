"""Phi-4-mini's tool-call format: ``<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>``; the tools
are offered as a JSON string in the system message's ``tools`` field, which the template writes between
``<|tool|>`` and ``<|/tool|>``."""

from __future__ import annotations

import json
from typing import Any

import attrs

from adaptrix.generation.tools.format import ToolFormat
from adaptrix.generation.tools.spec import ToolUse


@attrs.frozen
class Phi4ToolFormat(ToolFormat):
    """Tagged JSON list; the tags are special tokens (dropped by decoding), so a bare list at the start is read
    as the calls, and a forced call is written as the bare list."""

    name: str = "phi4"
    open_tag: str = "<|tool_call|>"
    close_tag: str = "<|/tool_call|>"
    list_body: bool = True
    bare_calls: bool = True
    padding: str = ""
    separator: str = ", "

    def offer(self, messages: list[dict[str, Any]], use: ToolUse,
              template: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if not template or "<|tool|>" not in template:
            return super().offer(messages, use, template)
        tools = json.dumps([t.as_openai()["function"] for t in use.tools], ensure_ascii=False)
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "tools": tools}, *messages[1:]], {}
        return [{"role": "system", "content": "You are a helpful assistant with some tools.", "tools": tools},
                *messages], {}
