"""Scores: log-probabilities of tokens given what precedes them, on any backend (issue 17 item 1).

The value objects (:class:`TokenLogprob`, :class:`Score`) and what does not
depend on the backend: splitting text into context and continuation ids as
lm-evaluation-harness does (:func:`split_item`), planning batches
(:func:`plan_batches`), turning raw logits into logprobs, greedy flags and
top-k alternatives (:func:`logprob_rows`, and :func:`row_logprob` for one
row, which step decoders call). A backend computes the logits of its rows in
:meth:`adaptrix.backends.contract.Runner.token_logprobs`; the engine's scoring
calls are in :mod:`adaptrix.score_requests`.

Logprobs are always those of the model's raw logits (``log_softmax`` in
float32, before temperature, top-p/top-k or repetition penalty), as vLLM's
default ``raw_logprobs`` and OpenAI report them.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import attrs

from adaptrix.errors import GenerationError

#: The most alternatives a caller may ask for per token (OpenAI's and vLLM's limit for ``logprobs``).
MAX_TOP = 20
#: Rows and padded tokens of one scoring forward pass (bounds the logits a batch keeps in memory).
MAX_ROWS = 16
MAX_BATCH_TOKENS = 4096

Text = str | Sequence[int]


@attrs.frozen
class TokenLogprob:
    """One token and its log-probability given everything before it."""

    token_id: int
    #: The token's own text piece (as the tokenizer renders that single token).
    text: str
    #: ``log p(token | everything before it)``; ``None`` for the first token of a sequence (no context).
    logprob: float | None
    #: The token is the argmax at its position.
    greedy: bool
    #: The ``top`` best alternatives ``(id, text, logprob)``, best first.
    top: tuple[tuple[int, str, float], ...] = ()


@attrs.frozen
class Score:
    """The log-likelihood of a continuation given a context."""

    #: Tokens of the context.
    context_tokens: int
    #: The continuation's tokens, in order.
    tokens: tuple[TokenLogprob, ...]

    @property
    def logprob(self) -> float:
        """The continuation's log-likelihood: the sum over its tokens."""
        return float(sum(t.logprob for t in self.tokens if t.logprob is not None))

    @property
    def greedy(self) -> bool:
        """Every continuation token is the argmax at its position (lm-eval's ``is_greedy``)."""
        return all(t.greedy for t in self.tokens)


# -- logits -> logprobs (one owner for both backends) -------------------------------------------
def check_top(top, what: str = "top") -> int:
    """``top`` as a whole number 0..:data:`MAX_TOP`, else :class:`GenerationError` naming it."""
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise GenerationError(f"{what} must be a whole number from 0 to {MAX_TOP} (alternatives per token), "
                              f"got {top!r}")
    return top


def pieces(tokenizer) -> Callable[[int], str]:
    """``piece(id) -> text``: one token rendered alone by ``tokenizer`` (special tokens included), cached."""
    return functools.lru_cache(maxsize=None)(lambda i: tokenizer.decode([int(i)], skip_special_tokens=False))


def logprob_rows(logits, targets: Sequence[int], *, top: int = 0, piece: Callable[[int], str]) -> list[TokenLogprob]:
    """A :class:`TokenLogprob` for ``targets[i]`` scored by row ``i`` of ``logits`` (``(n, vocab)`` raw logits).

    ``logits``: a torch tensor (computed where it lies, in float32) or anything numpy takes.
    """
    if not len(targets):
        return []
    if type(logits).__module__.startswith("torch"):
        import torch

        lp = torch.log_softmax(logits.float(), dim=-1)
        idx = torch.tensor([int(t) for t in targets], device=lp.device)
        chosen = lp.gather(1, idx[:, None])[:, 0]
        greedy = (chosen >= lp.max(dim=-1).values).tolist()
        chosen = chosen.tolist()
        if top:
            values, ids = lp.topk(min(top, lp.shape[-1]), dim=-1)
            values, ids = values.tolist(), ids.tolist()
    else:
        import numpy as np

        x = np.asarray(logits, dtype=np.float32)
        shifted = x - x.max(axis=-1, keepdims=True)
        lp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        rows = np.arange(len(targets))
        picked = lp[rows, np.asarray(targets, dtype=np.int64)]
        greedy = (picked >= lp.max(axis=-1)).tolist()
        chosen = picked.tolist()
        if top:
            k = min(top, lp.shape[-1])
            part = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
            order = np.take_along_axis(lp, part, axis=-1).argsort(axis=-1)[:, ::-1]
            ids = np.take_along_axis(part, order, axis=-1)
            values = np.take_along_axis(lp, ids, axis=-1).tolist()
            ids = ids.tolist()
    return [
        TokenLogprob(
            token_id=int(t), text=piece(int(t)), logprob=float(chosen[i]), greedy=bool(greedy[i]),
            top=tuple((int(a), piece(int(a)), float(v)) for a, v in zip(ids[i], values[i])) if top else (),
        )
        for i, t in enumerate(targets)
    ]


def row_logprob(logits, token_id: int, *, top: int = 0, piece: Callable[[int], str]) -> TokenLogprob:
    """The :class:`TokenLogprob` of ``token_id`` from one position's raw logits (``(vocab,)``, torch or numpy).

    For step decoders reporting each row's new token; ``piece`` from :func:`pieces`.
    """
    return logprob_rows(logits[None], [token_id], top=top, piece=piece)[0]


def first_token(token_id: int, piece: Callable[[int], str]) -> TokenLogprob:
    """The first token of a sequence: no context, so no logprob (OpenAI's ``null``)."""
    return TokenLogprob(token_id=int(token_id), text=piece(int(token_id)), logprob=None, greedy=False)


# -- items -> ids -------------------------------------------------------------------------------
def split_item(tokenizer, context: Text, continuation: Text, *, what: str = "item") -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as lm-evaluation-harness splits them.

    Text: trailing whitespace of the context moves to the continuation, then
    ``whole = encode(context + continuation)``, ``ctx = encode(context)`` and
    the continuation is ``whole[len(ctx):]`` (the tokenizer's own special tokens
    only). Token ids are taken as they are. An empty context scores from the
    BOS token (the EOS token when the model has none).
    """
    def encode(text: str, special: bool = True) -> list[int]:
        return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]

    def ids(value: Text, name: str) -> list[int] | None:
        if isinstance(value, str):
            return None
        if not isinstance(value, Sequence) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                                  for i in value):
            raise GenerationError(f"{what}: the {name} must be text or a list of token ids, got {value!r}")
        return [int(i) for i in value]

    ctx, cont = ids(context, "context"), ids(continuation, "continuation")
    if ctx is None and cont is None and context:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = encode(context + continuation)
        ctx = encode(context)
        cont = whole[len(ctx):]  # lm-eval's split, even where the join merged the context's last token
    else:
        if ctx is None:
            ctx = encode(context) if context else []
        if cont is None:
            cont = encode(continuation, special=False)
    if not ctx:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise GenerationError(f"{what}: the context is empty and the model has no BOS or EOS token to score "
                                  "the continuation from; give a context")
        ctx = [int(prefix)]
    if not cont:
        raise GenerationError(f"{what}: the continuation {continuation!r} has no tokens; nothing to score")
    return ctx, cont


def plan_batches(lengths: Sequence[int], *, max_rows: int = MAX_ROWS,
                 max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indices grouped into batches, longest first (little padding), each at most ``max_rows`` rows and
    ``max_tokens`` padded tokens (a row longer than that goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_rows and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
