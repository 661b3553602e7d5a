"""Token logprobs on the transformers backend: one forward pass per left-padded batch.

Rows may each have their own adapter: the batch goes through the adapter
manager's mixed batch (``adapter_names``, see
:meth:`adaptrix.adapters.peft_manager.PeftAdapterManager.batch_kwargs`), as
``generate`` does. Positions come from the attention mask, so a padded row
computes as it would alone; only the positions that score something are
projected to the vocabulary (``logits_to_keep``) where the model supports it.
"""

from __future__ import annotations

import inspect
from typing import Sequence

from adaptrix.generation import scoring


def token_logprobs(runner, rows: Sequence[Sequence[int]], starts: Sequence[int], *,
                   adapters: Sequence[str | None] | None = None, top: int = 0) -> list[list[scoring.TokenLogprob]]:
    """See :meth:`adaptrix.backends.contract.Runner.token_logprobs`."""
    import torch

    piece = scoring.pieces(runner.loaded.tokenizer)
    rows = [[int(t) for t in r] for r in rows]
    first = [max(int(s), 1) for s in starts]  # the first position that has a context
    width = max(len(r) for r in rows)
    # logits at padded position p score the token at p + 1; each row ends at width - 1
    keep = max(len(r) - f + 1 for r, f in zip(rows, first))
    pad = runner.pad_id if runner.pad_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=runner.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=runner.device)
    kw = {}
    if adapters is not None and runner.manager is not None:
        kw.update(runner.manager.batch_kwargs(list(adapters), len(rows)))
    model = runner.manager.generation_model() if runner.manager is not None else runner.loaded.model
    if _keeps_logits(runner.loaded.model):
        kw["logits_to_keep"] = keep
    else:
        keep = width
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       use_cache=False, **kw).logits[:, -keep:]
        out = []
        for b, (row, start, f) in enumerate(zip(rows, starts, first)):
            at = keep - (len(row) - f) - 1  # the kept index scoring row[f]
            scored = scoring.logprob_rows(logits[b, at : keep - 1], row[f:], top=top, piece=piece)
            out.append(([scoring.first_token(row[0], piece)] if start == 0 else []) + scored)
    return out


def _keeps_logits(model) -> bool:
    """The model's forward takes ``logits_to_keep`` (every generative model of recent transformers)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
