"""Streaming a generation from any thread: the model is leased to the stream, not to a thread.

:func:`stream_pieces` is the generator behind ``Engine.stream`` and
``Engine.stream_detailed``: it returns the
:class:`~adaptrix.generation.result.GenerationResult` that :class:`DetailedStream`
exposes once the pieces are exhausted.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Generator

from adaptrix.generation.conversation import Conversation
from adaptrix.generation.lease import LeasedTokens, ModelLease
from adaptrix.generation.matcher import grammar_options
from adaptrix.generation.preparer import remember
from adaptrix.generation.request import GenerationRequest
from adaptrix.generation.result import GenerationResult, finished_result
from adaptrix.score_requests import rescored
from adaptrix.generation.text import IncrementalDecoder
from adaptrix.session import Session


def stream_pieces(
    lease: ModelLease,
    session: Callable[[], Session],
    conversation_for: Callable[[GenerationRequest], Conversation | None],
    req: GenerationRequest,
) -> Generator[str, None, GenerationResult]:
    """The text pieces of ``req``'s generation; returns its result (see :class:`DetailedStream`).

    ``session()``: the loaded session (raising when there is none); ``conversation_for(req)``: the
    conversation the request continues and is remembered in, if any. The model is leased to this stream
    (a token, not a thread) from the first ``next()`` until its generation ends: ``next()`` may come from
    any thread and generates there (:meth:`Runner.stream_tokens`); a call made meanwhile, from any thread,
    this one included, finishes the stream's generation into a buffer first
    (:class:`~adaptrix.generation.lease.LeasedTokens`), so it never changes the stream and never deadlocks.
    """
    owner = StreamOwner()
    lease.acquire(owner)
    try:
        with lease.acting_as(owner), contextlib.ExitStack() as held:
            loaded = session()
            held.enter_context(loaded.manager.scope(req.adapter))
            active = loaded.manager.active  # what the logprobs are scored with, once generated
            conv = conversation_for(req)
            prepared = loaded.preparer.prepare(req, conv)
            decoder = IncrementalDecoder(loaded.runner.loaded.tokenizer, prepared.decode_context)
            grammar = grammar_options(loaded.runner, [prepared.grammar])
            tokens = loaded.runner.stream_tokens(prepared.input_ids, prepared.settings,
                                                 stop=loaded.preparer.stop_check([prepared]),
                                                 **({"grammar": prepared.grammar} if grammar else {}))
            scope = held.pop_all()  # from here on the generation's end restores the adapters
        generation = LeasedTokens(lease, owner, tokens, on_end=scope.close)
    except BaseException:
        lease.release(owner)
        raise
    pipeline = prepared.pipeline()
    pieces: list[str] = []
    try:
        while (token := generation.next()) is not None:
            piece = pipeline.feed(decoder.add((token,)))
            if piece:
                pieces.append(piece)
                yield piece
        tail = pipeline.feed(decoder.finish()) + pipeline.flush()
        if tail:
            pieces.append(tail)
            yield tail
        text = "".join(pieces)
        if conv is not None:
            with lease:
                remember(conv, req, text)
    finally:
        generation.close()  # closed, dropped or done: stop the generation and free the model
    result = finished_result(prepared, decoder.ids, text, decoder.text, pipeline)
    if req.logprobs is not None:
        with lease, loaded.manager.scope(active):
            result = rescored(loaded.runner, [prepared], [result], req.logprobs)[0]
    return result


class DetailedStream:
    """The text pieces of a generation (``Engine.stream_detailed``); ``result`` once they are exhausted.

    ``result`` is ``None`` until the generation has ended, and stays ``None`` for
    a stream closed early. ``close()`` (or dropping the stream) stops the generation.
    """

    def __init__(self, pieces: Generator[str, None, GenerationResult]):
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> "DetailedStream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as end:
            if end.value is not None:
                self.result = end.value
            raise

    def close(self) -> None:
        self._pieces.close()


class StreamOwner:
    """The identity a stream holds the model lease under (hashable by identity)."""

    __slots__ = ("__weakref__",)

