"""The step-decoder seam: what ``adaptrix serve``'s scheduler drives, and what every step decoder shares.

A backend whose runner declares ``"step_decode"`` in
:attr:`~adaptrix.backends.contract.Runner.capabilities` returns a
:class:`StepDecoder` from ``Runner.step_decoder(lease=..., max_rows=...,
batch_invariant=...)``, built from its own model, tokenizer and adapter manager;
the scheduler (:mod:`adaptrix.serve.scheduler`) knows nothing else of it.
Shared here, so that every backend answers the same way:

- :class:`Row`: one request being decoded (a backend adds its per-row state in an
  attrs subclass);
- :func:`row_finish`: when a row ends; :meth:`Row.accept`: a row's next token;
- :func:`row_tail`: the text a row's pipeline still holds back at its end;
- :func:`finish_row`: the :class:`~adaptrix.generation.result.GenerationResult`
  of a row's tokens, the one ``Engine.generate_detailed`` returns for them
  (:func:`row_result`: with the logprobs a row recorded at each step, when its
  request asks for them);
- :func:`add_each`: ``add_many`` where prompts are not prefilled together.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, TypeVar, runtime_checkable

import attrs

from adaptrix.generation.result import GenerationResult, PreparedRequest, finished_result
from adaptrix.generation.scoring import TokenLogprob, pieces, row_logprob
from adaptrix.generation.text import IncrementalDecoder, TextPipeline, decode_after

#: ``(key, prepared, adapter)``: a request to add to a decoder.
Item = tuple[Any, PreparedRequest, str | None]

R = TypeVar("R", bound="Row")


@attrs.define(eq=False)
class Row:
    """One request being decoded: what every backend's row has. Backends add their own state
    (KV cache, sequence id, sampler) in an attrs subclass; rows compare by identity."""

    key: Any
    prepared: PreparedRequest
    #: The adapter the row decodes with, as the caller named it (None: the base model).
    adapter: str | None
    #: Turns the row's ids into text deltas.
    decoder: IncrementalDecoder
    #: The request's hidden spans and stop strings, applied to those deltas.
    pipeline: TextPipeline
    generated: list[int] = attrs.field(factory=list)
    #: ``eos``, ``stop`` or ``length`` once finished.
    finish_reason: str | None = None
    #: Position of the next token fed to the model.
    position: int = 0
    #: With ``prepared.logprobs``: each generated token's :class:`TokenLogprob`, from the step's raw logits.
    logprobs: list[TokenLogprob] = attrs.field(factory=list)
    #: ``piece(id) -> text`` (:func:`~adaptrix.generation.scoring.pieces`); only for rows with logprobs.
    piece: Any = None

    @classmethod
    def open(cls: type[R], key: Any, prepared: PreparedRequest, adapter: str | None, tokenizer: Any,
             **state: Any) -> R:
        """A new row of ``prepared``, with a fresh text decoder and pipeline; ``state``: the subclass's fields."""
        return cls(key=key, prepared=prepared, adapter=adapter,
                   decoder=IncrementalDecoder(tokenizer, prepared.decode_context),
                   pipeline=prepared.pipeline(), piece=pieces(tokenizer) if prepared.logprobs is not None else None,
                   **state)

    @property
    def wants_logprobs(self) -> bool:
        """The request asks for its tokens' logprobs: the decoder passes each step's raw logits to :meth:`accept`."""
        return self.prepared.logprobs is not None

    def accept(self, token: int, logits: Any = None) -> str:
        """Take the row's next token: the text it releases; ``finish_reason`` set when the row ends (:func:`row_finish`).

        ``logits``: the model's raw logits (``(vocab,)``, before penalties, bias, grammar mask and temperature)
        the token was picked from; a row that :attr:`wants_logprobs` records the token's :class:`TokenLogprob`."""
        if self.wants_logprobs:
            self.logprobs.append(row_logprob(logits, token, top=self.prepared.logprobs, piece=self.piece))
        self.generated.append(token)
        text = self.pipeline.feed(self.decoder.add([token]))
        self.finish_reason = row_finish(self.prepared, self.generated, self.pipeline)
        return text


@runtime_checkable
class StepDecoder(Protocol):
    """Decodes up to ``max_rows`` requests together, one token per row per :meth:`step`, each row with its
    own adapter. All calls come from one thread (the server's scheduler) and hold the engine's model lease
    while they touch the model.

    Greedy rows get what ``generate`` gives the request alone, up to floating-point effects of computing
    rows together; a decoder made with ``batch_invariant=True`` computes each row exactly as ``generate``
    computes the request alone.
    """

    @property
    def rows(self) -> Sequence[Row]:
        """The rows being decoded, finished ones included until :meth:`remove`."""
        ...

    def add(self, key: Any, prepared: PreparedRequest, adapter: str | None) -> tuple[Row, str]:
        """Prefill a new row and pick its first token: the row and the text that token releases.

        Raises :class:`~adaptrix.errors.BatchFullError` while there is no room (the caller retries once a
        row finished), or the error of a bad request (an adapter that cannot load)."""
        ...

    def add_many(self, items: Sequence[Item]) -> list[tuple[Row, str] | BaseException]:
        """:meth:`add` for each ``(key, prepared, adapter)``, prefilled together where the backend can: per
        item in order, ``(row, text)`` or the exception that item raised (one bad item fails alone)."""
        ...

    def step(self) -> list[tuple[Row, str]]:
        """One token for every row: ``(row, text released)`` per row. A row that ends gets its
        ``finish_reason``; the caller removes it before the next step."""
        ...

    def remove(self, row: Row) -> None:
        """Take a row out (finished or cancelled) and free what it holds."""
        ...

    def tail(self, row: Row) -> str:
        """The text the row's pipeline still holds back, released at its end (:func:`row_tail`)."""
        ...

    def finish(self, row: Row) -> GenerationResult:
        """The result ``generate`` returns for the row's tokens (:func:`row_result`), with the logprobs the row
        recorded when it asked for them."""
        ...

    def close(self) -> None:
        """Remove every row (the decoder is dropped after)."""
        ...


def row_finish(prepared: PreparedRequest, generated: Sequence[int], pipeline: TextPipeline) -> str | None:
    """Why a step-decoded row ends after its last token (``eos``, ``stop``, ``length``), or ``None``.

    The one rule for step decoders, as ``generate`` ends a row.
    """
    if generated and generated[-1] in prepared.eos_ids:
        return "eos"
    if pipeline.stopped:
        return "stop"
    if len(generated) >= prepared.settings.max_new_tokens:
        return "length"
    return None


def row_tail(row: Row) -> str:
    """Text still held back by the row's decoder and pipeline, released at its end."""
    return row.pipeline.feed(row.decoder.finish()) + row.pipeline.flush()


def finish_row(prepared: PreparedRequest, generated: Sequence[int], tokenizer: Any) -> GenerationResult:
    """The :class:`GenerationResult` of a request whose generated ids are ``generated``: what
    ``Engine.generate_detailed`` returns and every step decoder's ``finish``."""
    new = list(generated)
    raw_text = decode_after(tokenizer, prepared.decode_context, new)
    pipeline = prepared.pipeline()
    text = pipeline.run(raw_text)
    return finished_result(prepared, new, text, raw_text, pipeline)


def row_result(row: Row, tokenizer: Any) -> GenerationResult:
    """A finished row's result (:func:`finish_row`); ``logprobs``: the ones it recorded step by step, when asked."""
    result = finish_row(row.prepared, row.generated, tokenizer)
    return attrs.evolve(result, logprobs=tuple(row.logprobs)) if row.wants_logprobs else result


def add_each(decoder: StepDecoder, items: Sequence[Item]) -> list[tuple[Row, str] | BaseException]:
    """``decoder.add(key, prepared, adapter)`` for each item, in order: ``(row, text)`` or the exception
    that item raised. A step decoder's ``add_many`` where prompts are not prefilled together."""
    out: list = []
    for key, prepared, adapter in items:
        try:
            out.append(decoder.add(key, prepared, adapter))
        except Exception as exc:
            out.append(exc)
    return out
