"""The text pipeline: what a generation's ids become as returned text, whole or streamed.

Returned text goes through one pipeline, in this order: hidden spans removed
(``<think>...</think>``, unless ``show_thinking``), cut at the first stop
string (the stop string itself is not returned), leading and trailing
whitespace trimmed (unless the request asks for the text as generated:
``trim=False``, raw completions). Streaming runs the very same pipeline piece by piece, so
the concatenated stream equals the generated text.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def _partial_suffix(text: str, needles: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a needle."""
    best = 0
    for needle in needles:
        for k in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:k]):
                best = k
                break
    return best


class SpanHider:
    """Remove ``open ... close`` spans from text fed piece by piece.

    An unclosed span hides everything after its opening tag (a thought cut
    off by ``max_new_tokens`` is not an answer). When the prompt itself ends
    with an opening tag (Qwen3 thinking-only templates end with ``<think>\n``),
    pass ``inside=`` its closing tag: the output starts inside the span.
    """

    def __init__(self, spans: Sequence[tuple[str, str]], inside: str | None = None):
        self.spans = tuple(spans)
        self.buf = ""
        #: The closing tag of the span we are in; ``inside`` starts there (the prompt opened it).
        self.close: str | None = inside

    def feed(self, text: str) -> str:
        self.buf += text
        out = []
        while True:
            if self.close is None:
                hits = [(self.buf.find(o), o, c) for o, c in self.spans if o in self.buf]
                if not hits:
                    keep = _partial_suffix(self.buf, [o for o, _ in self.spans])
                    out.append(self.buf[: len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep :]
                    return "".join(out)
                idx, opening, closing = min(hits)
                out.append(self.buf[:idx])
                self.buf = self.buf[idx + len(opening) :]
                self.close = closing
            else:
                idx = self.buf.find(self.close)
                if idx < 0:
                    keep = _partial_suffix(self.buf, [self.close])
                    self.buf = self.buf[len(self.buf) - keep :]
                    return "".join(out)
                self.buf = self.buf[idx + len(self.close) :]
                self.close = None

    def flush(self) -> str:
        out = self.buf if self.close is None else ""
        self.buf = ""
        return out


class StopCutter:
    """Pass text through until the first stop string; never emit the stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buf = self.buf[: min(hits)], ""
            return out
        keep = _partial_suffix(self.buf, self.stops)
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.stopped else self.buf), ""
        return out


class WhitespaceTrimmer:
    """Strip leading and trailing whitespace of a text fed piece by piece."""

    def __init__(self):
        self.started = False
        self.pending = ""

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        text = self.pending + text
        core = text.rstrip()
        self.pending = text[len(core) :]
        return core

    def flush(self) -> str:
        self.pending = ""
        return ""


class TextPipeline:
    """Hidden spans -> stop strings -> whitespace trim (``trim=True``), incrementally."""

    def __init__(self, spans: Sequence[tuple[str, str]] = (), stops: Sequence[str] = (), inside: str | None = None,
                 *, trim: bool = True):
        self.stages: list = []
        if spans:
            self.stages.append(SpanHider(spans, inside))
        self.cutter = StopCutter(stops) if stops else None
        if self.cutter:
            self.stages.append(self.cutter)
        if trim:
            self.stages.append(WhitespaceTrimmer())

    @property
    def stopped(self) -> bool:
        return bool(self.cutter and self.cutter.stopped)

    def feed(self, text: str) -> str:
        for stage in self.stages:
            text = stage.feed(text)
        return text

    def flush(self) -> str:
        out = ""
        for i, stage in enumerate(self.stages):
            # what an earlier stage releases on flush still runs through the later ones
            out = stage.feed(out) if out else ""
            out += stage.flush()
        return out

    def run(self, text: str) -> str:
        return self.feed(text) + self.flush()


def hide_spans(text: str, spans: Sequence[tuple[str, str]], inside: str | None = None) -> str:
    """``text`` without its hidden spans (non-incremental form of :class:`SpanHider`)."""
    if not spans:
        return text
    h = SpanHider(spans, inside)
    return h.feed(text) + h.flush()


def visible_text(
    text: str, spans: Sequence[tuple[str, str]], stops: Sequence[str] = (), inside: str | None = None
) -> str:
    return TextPipeline(spans, stops, inside).run(text)


def open_span(prompt_text: str, spans: Sequence[tuple[str, str]]) -> str | None:
    """The closing tag to wait for when the prompt ends inside a span (it ends with the opening tag)."""
    tail = prompt_text.rstrip()
    for opening, closing in spans:
        if tail.endswith(opening):
            return closing
    return None


# -- decoding and transformers glue -------------------------------------------------


class IncrementalDecoder:
    """Turn a growing list of token ids into text deltas (holding back split UTF-8).

    Each step decodes a short window, not the whole text: the last emitted
    tokens (the context a tokenizer needs for spaces and merges) plus the new
    ones, and emits what the new ones add. :meth:`finish` checks the result
    against one decode of every id, so the joined deltas always equal
    ``decode(ids)`` (:func:`decode_after` with ``context``).

    ``context``: the prompt's last ids, decoded before the first new token and
    never emitted, so a tokenizer that drops the leading space of a sequence's
    first token (SentencePiece: ``"▁Paris"`` alone reads ``"Paris"``) keeps it
    (raw completions: ``prompt + text`` is the decoded prompt and generation).
    """

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.context = [int(i) for i in context]
        self.ids: list[int] = []  # the generated ids (the context excluded)
        self.text = ""  # what was emitted so far
        self._prefix = 0  # the window starts here, in context + ids (context tokens, already emitted)
        self._read = len(self.context)  # tokens of context + ids before this one are emitted

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, ids: Iterable[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        every = self.context + self.ids
        window = self._decode(every[self._prefix:])
        if window.endswith("\ufffd"):
            return ""  # a multi-byte character is not complete yet
        before = self._decode(every[self._prefix:self._read]) if self._read > self._prefix else ""
        if not window.startswith(before):  # the new tokens rewrote their context: take the whole text
            delta = self._advance(decode_after(self.tokenizer, self.context, self.ids))
        else:
            delta = window[len(before):]
            self.text += delta
        self._prefix, self._read = self._read, len(every)
        return delta

    def finish(self) -> str:
        return self._advance(decode_after(self.tokenizer, self.context, self.ids))

    def _advance(self, full: str) -> str:
        if full.startswith(self.text):
            delta = full[len(self.text) :]
        else:  # the tokenizer rewrote earlier text (rare); emit only what is new
            common = 0
            for a, b in zip(self.text, full):
                if a != b:
                    break
                common += 1
            delta = full[max(common, len(self.text)) :] if len(full) > len(self.text) else ""
        self.text = full
        return delta


def decode_after(tokenizer, context: Sequence[int], ids: Sequence[int]) -> str:
    """The text ``ids`` add after ``context`` (special tokens skipped): ``decode(context + ids)`` less
    ``decode(context)``; ``decode(ids)`` alone when there is no context, or when the context's text is not a
    prefix of the whole (a character split between the two)."""
    alone = tokenizer.decode(list(ids), skip_special_tokens=True)
    if not context:
        return alone
    head = tokenizer.decode(list(context), skip_special_tokens=True)
    whole = tokenizer.decode(list(context) + list(ids), skip_special_tokens=True)
    if head.endswith("\ufffd") or not whole.startswith(head):
        return alone
    return whole[len(head):]


def stop_check(tokenizer, rows: Sequence[tuple[Sequence[tuple[str, str]], Sequence[str], str | None]],
               contexts: Sequence[Sequence[int]] | None = None):
    """``stop(row, new_ids) -> bool`` for a backend: True once row ``row``'s visible text holds a stop string.

    ``rows[i]`` is row i's ``(hidden spans, stop strings, inside)``; the text is
    decoded (after ``contexts[i]``, see :func:`decode_after`) and its hidden spans
    removed first, as the returned text will be.
    """
    rows = [(tuple(spans), tuple(stops), inside) for spans, stops, inside in rows]
    contexts = [tuple(c) for c in contexts] if contexts is not None else [()] * len(rows)

    def stop(row: int, new_ids: Sequence[int]) -> bool:
        spans, stops, inside = rows[row]
        if not stops:
            return False
        text = hide_spans(decode_after(tokenizer, contexts[row], new_ids), spans, inside)
        # only the tail can hold a stop string that just completed
        longest = max(len(s) for s in stops)
        tail = text[-(longest + 64):] if not spans else text
        return any(s in tail for s in stops)

    return stop
