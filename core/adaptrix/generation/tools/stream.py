"""Calls in a streamed output, found as the text arrives: :class:`ToolStream`.

Text streams on as content until something that may open a call (a format's :meth:`~ToolFormat.openers`,
or the first character of a tagless call at the output's start) could be starting: from there the text is
held back. While a call is being written, its name is announced (:class:`CallHead`) as soon as it is
written and its arguments' JSON text is passed on in pieces as it arrives (:class:`CallArguments`), where the
format can tell (:meth:`~ToolFormat.partial_calls`); a call it cannot follow comes out whole
(:class:`~adaptrix.generation.tools.calls.ToolCall`) once its text is. Text that turns out not to be a call is released as
content. At the end, :meth:`ToolStream.finish` parses what is still held (a call whose close tag never came
is still a call).
"""

from __future__ import annotations

from typing import Union

import attrs

from adaptrix.generation.tools.calls import ToolCall, new_call_id
from adaptrix.generation.tools.format import ToolFormat


@attrs.frozen
class CallHead:
    """A call has begun: its id and function name (its arguments follow as :class:`CallArguments`)."""

    id: str
    name: str


@attrs.frozen
class CallArguments:
    """The next piece of the arguments' JSON text of the call announced with this ``id``."""

    id: str
    text: str


#: What :meth:`ToolStream.feed` gives: content text, a call's head or arguments piece, or a whole call.
Event = Union[str, CallHead, CallArguments, ToolCall]


class ToolStream:
    """Feed it an output's pieces; it gives content, call heads, argument pieces and whole calls, in order."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.held = ""
        #: Whether a tagless call may start here (at the output's start, or right after a call).
        self.bare_ok = bool(fmt.bare_openers())
        #: Whether :attr:`held` starts a call (else it may still become content).
        self.in_call = False
        #: The calls of the held text announced so far: ``[id, name, characters of arguments sent]``.
        self.open: list[list] = []
        #: Every call found, whole (ids as announced).
        self.calls: list[ToolCall] = []

    def feed(self, piece: str) -> list[Event]:
        """The content and calls ``piece`` completes."""
        self.held += piece
        out: list[Event] = []
        while self.held:
            if self.in_call:
                closed = self.fmt.close_tag in self.held if self.fmt.close_tag else self.held.rstrip()[-1:] in "}]"
                segs = self.fmt.scan(self.held) if closed else []  # a call cannot be whole before it closes
                if not segs or segs[0].start != 0 or not self.fmt.complete(self.held, segs[0]):
                    out.extend(self._follow(self.held))
                    break  # not whole yet
                out.extend(self._close(segs[0].calls, self.held[:segs[0].end]))
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
        segs = self.fmt.scan(held)
        out: list[Event] = []
        pos = 0
        for seg in segs:
            if held[pos:seg.start].strip():
                out.append(held[pos:seg.start])
            out.extend(self._close(seg.calls, held[seg.start:seg.end]))
            pos = seg.end
        if not segs and self.open:
            return []  # announced calls that never became whole: nothing more to send
        if held[pos:].strip() or not segs:
            out.append(held[pos:])
        return _merged(out)

    def _follow(self, text: str) -> list[Event]:
        """Heads and argument pieces of the calls being written at the start of ``text``."""
        out: list[Event] = []
        for i, (name, arguments) in enumerate(self.fmt.partial_calls(text)):
            if i == len(self.open):
                self.open.append([new_call_id(), name, 0])
                out.append(CallHead(self.open[i][0], name))
            call_id, _, sent = self.open[i]
            if len(arguments) > sent:
                out.append(CallArguments(call_id, arguments[sent:]))
                self.open[i][2] = len(arguments)
        return out

    def _close(self, calls, text: str) -> list[Event]:
        """The rest of a segment whose text is now whole: the announced calls' last argument pieces, then
        the calls not announced, whole."""
        out = self._follow(text) if self.open else []
        announced, self.open = self.open, []
        for i, call in enumerate(calls):
            if i < len(announced):
                call = ToolCall(call.name, call.arguments, announced[i][0])
            else:
                out.append(call)
            self.calls.append(call)
        return out

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
