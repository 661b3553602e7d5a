"""Tool calls in OpenAI's chat answers: the message of a finished answer, and the ``tool_calls`` deltas of a
streamed one (``index``, ``id``, ``type`` and ``function.name`` first, then ``function.arguments`` in pieces),
from the family's :class:`~adaptrix.generation.tools.format.ToolFormat` (:mod:`adaptrix.generation.tools.stream` finds the calls)."""

from __future__ import annotations

from typing import Any

from adaptrix.generation.tools.calls import ToolCall
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.generation.tools.stream import CallArguments, CallHead, ToolStream

#: The most characters of a call's arguments one delta carries, for a call found whole.
ARGUMENTS_PIECE = 32


def chat_message(result) -> dict[str, Any]:
    """The ``message`` of a finished chat answer: ``content`` (``None`` when the answer is only calls) and,
    when the model called tools, ``tool_calls``."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    return {"role": "assistant", "content": result.text or None,
            "tool_calls": [call.as_openai() for call in result.tool_calls]}


def finish_reason(result, reason: str) -> str:
    """``tool_calls`` when the answer called tools, else ``reason``."""
    return "tool_calls" if result.tool_calls else reason


class ToolDeltas:
    """A streamed chat answer's text turned into OpenAI deltas: ``{"content": ...}`` and ``{"tool_calls": [...]}``."""

    def __init__(self, fmt: ToolFormat):
        self.stream = ToolStream(fmt)
        self.count = 0
        self.index: dict[str, int] = {}  # call id -> its index in the answer

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas ``text`` (a piece of the answer) completes."""
        return self._deltas(self.stream.feed(text))

    def finish(self) -> list[dict[str, Any]]:
        """The deltas left once the answer ended."""
        return self._deltas(self.stream.finish())

    def _deltas(self, events) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ToolCall):
                out.extend(self._call(event))
            elif isinstance(event, CallHead):
                out.append({"tool_calls": [self._head(event.id, event.name)]})
            elif isinstance(event, CallArguments):
                out.append({"tool_calls": [{"index": self.index[event.id], "function": {"arguments": event.text}}]})
            elif event:
                out.append({"content": event})
        return out

    def _head(self, call_id: str, name: str) -> dict[str, Any]:
        index, self.count = self.count, self.count + 1
        self.index[call_id] = index
        return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        """A call found whole (not followed as it was written): its head, then its arguments in pieces."""
        head = self._head(call.id, call.name)
        index = head["index"]
        args = call.arguments
        pieces = [args[i:i + ARGUMENTS_PIECE] for i in range(0, len(args), ARGUMENTS_PIECE)]
        return [{"tool_calls": [head]}] + [{"tool_calls": [{"index": index, "function": {"arguments": p}}]}
                                           for p in pieces]
