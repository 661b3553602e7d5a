"""Calls in a streamed output, found as the text arrives: :class:`ToolStream`.

Text streams on as content until something that may open a call (a format's :meth:`~ToolFormat.openers`,
or the first character of a tagless call at the output's start) could be starting: from there the text is
held back. Once the held text is a whole call, its calls come out and streaming goes on after it; text that
turns out not to be a call is released as content. At the end, :meth:`ToolStream.finish` parses what is
still held (a call whose close tag never came is still a call).
"""

from __future__ import annotations

from typing import Union

from adaptrix.tools.calls import ToolCall
from adaptrix.tools.format import ToolFormat

#: What :meth:`ToolStream.feed` gives: content text, or a whole call.
Event = Union[str, ToolCall]


class ToolStream:
    """Feed it an output's pieces; it gives content pieces and :class:`ToolCall` s in order."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.held = ""
        #: Whether a tagless call may start here (at the output's start, or right after a call).
        self.bare_ok = bool(fmt.bare_openers())
        #: Whether :attr:`held` starts a call (else it may still become content).
        self.in_call = False
        self.calls: list[ToolCall] = []

    def feed(self, piece: str) -> list[Event]:
        """The content and calls ``piece`` completes."""
        self.held += piece
        out: list[Event] = []
        while self.held:
            if self.in_call:
                segs = self.fmt.scan(self.held)
                if not segs or segs[0].start != 0 or not self.fmt.complete(self.held, segs[0]):
                    break  # not whole yet
                out.extend(segs[0].calls)
                self.calls.extend(segs[0].calls)
                self.held = self.held[segs[0].end:]
                self.in_call, self.bare_ok = False, bool(self.fmt.bare_openers())
                continue
            if self.bare_ok:
                stripped = self.held.lstrip(" \t\r\n;," if self.calls else " \t\r\n")
                if not stripped:
                    break
                if stripped[0] in self.fmt.bare_openers():
                    self.held, self.in_call = stripped, True  # separators between calls are no content
                    continue
                self.bare_ok = False
            at, keep = self._opening()
            if at is not None:
                if at:
                    out.append(self.held[:at])
                self.held, self.in_call = self.held[at:], True
                continue
            if len(self.held) > keep:
                out.append(self.held[:len(self.held) - keep])
                self.held = self.held[len(self.held) - keep:]
            break
        return _merged(out)

    def finish(self) -> list[Event]:
        """What is left once the output ended: the held text parsed into calls and content."""
        held, self.held = self.held, ""
        if not held:
            return []
        parsed = self.fmt.parse(held)
        self.calls.extend(parsed.calls)
        out: list[Event] = []
        if parsed.calls:
            segs = self.fmt.scan(held)
            pos = 0
            for seg in segs:
                if held[pos:seg.start].strip():
                    out.append(held[pos:seg.start])
                out.extend(seg.calls)
                pos = seg.end
            if held[pos:].strip():
                out.append(held[pos:])
        else:
            out.append(held)
        return _merged(out)

    def _opening(self) -> tuple[int | None, int]:
        """``(where an opener starts in the held text, or None; how many last characters may begin one)``."""
        best = None
        for opener in self.fmt.openers():
            at = self.held.find(opener)
            if at >= 0 and (best is None or at < best):
                best = at
        if best is not None:
            return best, 0
        keep = 0
        for opener in self.fmt.openers():
            for n in range(min(len(opener) - 1, len(self.held)), 0, -1):
                if self.held.endswith(opener[:n]):
                    keep = max(keep, n)
                    break
        return None, keep


def _merged(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        if isinstance(e, str):
            if not e:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += e
                continue
        out.append(e)
    return out
