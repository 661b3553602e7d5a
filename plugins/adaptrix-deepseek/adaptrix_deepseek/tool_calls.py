"""DeepSeek's tool-call format (V3, R1): calls between ``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>``,
each ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`` then its arguments in a fenced JSON block and
``<｜tool▁call▁end｜>`` (what DeepSeek's chat template writes for an assistant's ``tool_calls``)."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

import attrs

from adaptrix.generation.tools.calls import ToolCall
from adaptrix.generation.tools.format import Segment, ToolFormat, lark_text
from adaptrix.generation.tools.spec import ToolSpec

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_CALL = re.compile(re.escape(CALL_BEGIN) + r"\s*(?:function)?" + re.escape(SEP) + r"\s*([A-Za-z0-9_-]+)\s*\n```(?:json)?\s*\n"
                   r"(.*?)\n```\s*(?:" + re.escape(CALL_END) + ")?", re.S)


@attrs.frozen
class DeepSeekToolFormat(ToolFormat):
    """DeepSeek's markers around ``function<｜tool▁sep｜>name`` and a fenced JSON block of arguments."""

    name: str = "deepseek"
    open_tag: str = CALLS_BEGIN
    close_tag: str = CALLS_END
    padding: str = ""
    #: The template concatenates an earlier call's arguments: JSON text, not an object.
    history_arguments: str = "string"

    def write_calls(self, calls: Sequence[tuple[str, Any]]) -> str:
        body = "\n".join(f"{CALL_BEGIN}function{SEP}{n}\n```json\n{json.dumps(a, ensure_ascii=False)}\n```{CALL_END}"
                         for n, a in calls)
        return f"{CALLS_BEGIN}{body}{CALLS_END}"

    def scan(self, text: str) -> list[Segment]:
        found = []
        pos = 0
        while True:
            at = text.find(CALLS_BEGIN, pos)
            if at < 0:
                return found
            end = text.find(CALLS_END, at)
            block = text[at:] if end < 0 else text[at:end]
            calls = []
            for m in _CALL.finditer(block):
                try:
                    args = json.loads(m.group(2))
                except ValueError:
                    calls = []
                    break
                if not isinstance(args, dict):
                    calls = []
                    break
                calls.append(ToolCall(m.group(1), json.dumps(args, ensure_ascii=False)))
            if not calls:
                pos = at + len(CALLS_BEGIN)
                continue
            stop = len(text) if end < 0 else end + len(CALLS_END)
            found.append(Segment(at, stop, tuple(calls)))
            pos = stop

    def tags(self) -> tuple[str, ...]:
        return (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)

    def start_rules(self, parallel: bool, ids: Mapping[str, int]) -> list[str]:
        body = 'call ("\\n" call)*' if parallel else "call"
        return [f"start: {lark_text(CALLS_BEGIN, ids)} {body} {lark_text(CALLS_END, ids)}"]

    def call_rule(self, tool: ToolSpec, ids: Mapping[str, int]) -> str:
        head = " ".join([lark_text(CALL_BEGIN, ids), lark_text("function", ids), lark_text(SEP, ids),
                         lark_text(f"{tool.name}\n```json\n")])
        return f"{head} %json {json.dumps(tool.parameters)} {lark_text(chr(10) + '```')} {lark_text(CALL_END, ids)}"
