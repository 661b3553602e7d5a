"""Token logprobs on llama.cpp: the runtime's logits for every position of each row.

LoRAs are set per context, so rows are grouped by adapter: each group's LoRAs
are set once, then each row is one fresh pass over its whole sequence (the
batch layout a raw ``llama_decode`` of that sequence has), scored by the
core's :func:`adaptrix.generation.scoring.logprob_rows`.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

from adaptrix.generation import scoring


def token_logprobs(runner, rows: Sequence[Sequence[int]], starts: Sequence[int], *,
                   adapters: Sequence[str | None] | None = None, top: int = 0) -> list[list[scoring.TokenLogprob]]:
    """See :meth:`adaptrix.backends.contract.Runner.token_logprobs`."""
    piece = scoring.pieces(runner.loaded.tokenizer)
    manager = runner.manager
    rows = [[int(t) for t in r] for r in rows]
    names = manager.rows(list(adapters), len(rows)) if adapters is not None else [None] * len(rows)
    groups: dict[str | None, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    out: list[list[scoring.TokenLogprob]] = [[] for _ in rows]
    for name, members in groups.items():
        scope = manager.scope(name) if adapters is not None else contextlib.nullcontext()
        with scope:
            manager.sync_context()  # a step decoder may have left another group's LoRAs set
            for i in members:
                row, start = rows[i], int(starts[i])
                first = max(start, 1)
                scored: list[scoring.TokenLogprob] = []
                if first < len(row):
                    # the last position scores nothing: dropped only where the whole row would fill the context
                    seq = row if len(row) < runner.runtime.n_ctx else row[:-1]
                    logits = runner.runtime.logits(seq, all_positions=True)
                    scored = scoring.logprob_rows(logits[first - 1 : len(row) - 1], row[first:], top=top, piece=piece)
                out[i] = ([scoring.first_token(row[0], piece)] if start == 0 else []) + scored
    return out
