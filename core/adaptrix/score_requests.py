"""The engine's scoring calls: items checked and split, adapters resolved, batches run on the runner.

``Engine.score``, ``score_batch``, ``token_logprobs`` and generation with
``logprobs=K`` delegate here while they hold the model; the value objects and
the backend-neutral logic are in :mod:`adaptrix.generation.scoring`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import attrs

from adaptrix.adapters.compositions import check_composition_weights
from adaptrix.errors import AdapterError, ContextOverflowError, GenerationError
from adaptrix.generation.scoring import Score, TokenLogprob, check_top, plan_batches, split_item
from adaptrix.types import UNSET

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.backends.contract import Runner
    from adaptrix.generation.result import GenerationResult, PreparedRequest


@contextlib.contextmanager
def adapter_scope(manager, adapter: Any = UNSET) -> Iterator[None]:
    """Make ``adapter`` (a name, a list, ``None``, :data:`UNSET` or a ``{name: weight}`` composition)
    active for the body, as ``generate`` does."""
    with contextlib.ExitStack() as stack:
        if isinstance(adapter, dict):
            adapter = stack.enter_context(hold(manager, adapter, "adapter"))
        stack.enter_context(manager.scope(adapter))
        yield


@contextlib.contextmanager
def hold(manager, weights: dict, what: str) -> Iterator[str | None]:
    """The name of the cached composition of ``weights`` (built on demand), held for the body."""
    weights = check_composition_weights(weights, what)
    composed = manager.hold(weights=list(weights.items()))
    try:
        yield composed.name
    finally:
        composed.release()


def score_batch(session, items: Sequence, *, adapters: Sequence | None = None, top: int = 0) -> list[Score]:
    """A :class:`Score` per ``(context, continuation)`` item, on the engine's loaded ``session`` (its
    ``runner``, ``adapters`` manager and ``context_length``; the caller holds the model).

    ``adapters``: one per item (``None``: the base model, a name, or a
    ``{name: weight}`` composition); ``None``: the active adapters for all.
    """
    runner, manager, context_length = session.runner, session.manager, session.context_length
    try:
        return _score_batch(runner, manager, runner.loaded.tokenizer, items, adapters, top, context_length)
    finally:
        manager.settle()  # mixed rows may keep more adapters resident than the budget


def _score_batch(runner: "Runner", manager, tokenizer, items, adapters, top, context_length) -> list[Score]:
    check_top(top)
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise GenerationError(f"items must be a list of (context, continuation) pairs, got {type(items).__name__}")
    if adapters is not None and (isinstance(adapters, (str, dict)) or len(adapters) != len(items)):
        raise AdapterError(f"adapters has {len(adapters)} entries for {len(items)} items; give one per item "
                           "(None for the base model)")
    split = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise GenerationError(f"items[{i}] must be a (context, continuation) pair, got {item!r}")
        ctx, cont = split_item(tokenizer, item[0], item[1], what=f"items[{i}]")
        if context_length is not None and len(ctx) + len(cont) > context_length:
            raise ContextOverflowError(
                f"items[{i}] is {len(ctx) + len(cont)} tokens and the context holds {context_length}: shorten it")
        split.append((ctx, cont))
    with contextlib.ExitStack() as stack:
        names = None
        if adapters is not None:
            names = []
            for i, a in enumerate(adapters):
                if isinstance(a, dict):
                    a = stack.enter_context(hold(manager, a, f"adapters[{i}]"))
                elif a is not None and not isinstance(a, str):
                    raise AdapterError(f"adapters[{i}] must be an adapter name, None (the base model) or a "
                                       f"{{name: weight}} composition, got {a!r}")
                names.append(a)
        scores: list[Score | None] = [None] * len(split)
        for batch in plan_batches([len(c) + len(k) for c, k in split]):
            rows = [split[i][0] + split[i][1] for i in batch]
            starts = [len(split[i][0]) for i in batch]
            done = runner.token_logprobs(rows, starts, adapters=None if names is None else [names[i] for i in batch],
                                         top=top)
            for i, tokens in zip(batch, done):
                scores[i] = Score(context_tokens=len(split[i][0]), tokens=tuple(tokens))
        return scores  # type: ignore[return-value]


def token_logprobs(runner: "Runner", ids: Sequence[int], *, start: int = 1, top: int = 0) -> list[TokenLogprob]:
    """``ids[start:]`` scored each given the ids before it (active adapters; the caller holds the model)."""
    check_top(top)
    ids = [int(i) for i in ids]
    if not ids:
        raise GenerationError("ids is empty: give at least one token id to score")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(ids):
        raise GenerationError(f"start must be a whole number from 0 to len(ids)={len(ids)}, got {start!r}")
    return runner.token_logprobs([ids], [start], top=top)[0]


def rescored(runner: "Runner", prepared: Sequence["PreparedRequest"], results: Sequence["GenerationResult"],
             top: int | None, adapters: Sequence[str | None] | None = None) -> list["GenerationResult"]:
    """``results`` with ``logprobs`` filled (``top`` alternatives each; ``None``: unchanged): the generated
    tokens scored after their prompts in one pass, with the adapters they were generated with."""
    if top is None:
        return list(results)
    rows = [list(p.input_ids) + list(r.token_ids) for p, r in zip(prepared, results)]
    starts = [len(p.input_ids) for p in prepared]
    done = runner.token_logprobs(rows, starts, adapters=None if adapters is None else list(adapters), top=top)
    return [attrs.evolve(r, logprobs=tuple(t)) for r, t in zip(results, done)]
