"""Tool calling: the tools a request offers, the calls a model writes, and each family's tool-call format.

- :mod:`.spec`: the checked tool definitions and tool choice (:class:`ToolUse`);
- :mod:`.calls`: :class:`ToolCall` and the parse result;
- :mod:`.format`: :class:`ToolFormat`, how a family renders tools, parses calls and forces one with a
  grammar; the generic JSON fallback every family without a format of its own gets;
- :mod:`.messages`: tool turns in a conversation (assistant ``tool_calls``, ``role: "tool"``);
- :mod:`.stream`: the incremental detection of calls in a streamed output.

A family plugin gives its format with the ``tool_format`` hook (:mod:`adaptrix.plugins.hookspecs`).
"""

from adaptrix.generation.tools.calls import ParsedOutput, ToolCall
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.generation.tools.spec import ToolSpec, ToolUse, check_tool_use

__all__ = ["ParsedOutput", "ToolCall", "ToolFormat", "ToolSpec", "ToolUse", "check_tool_use"]
