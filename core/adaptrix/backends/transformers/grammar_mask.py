"""Grammar masks on the transformers backend: each constrained row's forbidden tokens get ``-inf``.

:func:`token_vocabulary` describes the model's vocabulary to the grammar engine
(:mod:`adaptrix.generation.matcher`) from its fast tokenizer's ``tokenizer.json``;
:class:`GrammarLogitsProcessor` applies the rows' masks inside ``model.generate``
(a logits processor: it runs after the repetition penalty and before temperature,
top-k and top-p, so a sampled token is always one the grammar allows);
:func:`mask_row` does the same for one row of the step decoder.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from adaptrix.errors import BackendError, GenerationError
from adaptrix.generation.matcher import RowMatcher, TokenVocabulary


def token_vocabulary(model: Any, tokenizer: Any, eos_ids: Sequence[int]) -> TokenVocabulary:
    """The grammar engine's view of a transformers model: its fast tokenizer's JSON and its logits' width."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BackendError(
            f"the tokenizer of this model ({type(tokenizer).__name__}) is not a fast (Rust) tokenizer, which "
            "constrained decoding needs on the transformers backend; save the model with a tokenizer.json"
        )
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    head = model.get_output_embeddings()
    width = head.weight.shape[0] if head is not None else model.config.vocab_size
    return TokenVocabulary(n_vocab=int(width), eos_ids=tuple(eos_ids), tokenizer_json=backend.to_str())


def mask_row(matcher: RowMatcher, scores) -> Any:
    """``scores`` (``[1, vocab]`` float logits of one row) with the grammar's forbidden tokens at ``-inf``."""
    import torch

    blocked = torch.from_numpy(matcher.blocked()[: scores.shape[-1]]).to(scores.device)
    return scores.masked_fill(blocked.unsqueeze(0), float("-inf"))


class GrammarLogitsProcessor:
    """A transformers logits processor enforcing a grammar per row (``None``: a free row) in ``model.generate``.

    ``prompt_width``: the padded prompt's length; from the second call on, each row's last id is the token
    drawn for it and its matcher accepts it. A row that ended (its EOS, or a stop string: padding follows)
    is left unmasked once its matcher refuses what follows."""

    def __init__(self, matchers: Sequence[RowMatcher | None], prompt_width: int):
        self.matchers = list(matchers)
        self.width = prompt_width
        self.ended = [m is None for m in self.matchers]

    def __call__(self, input_ids, scores):
        import torch

        drawn = input_ids.shape[1] > self.width
        for i, matcher in enumerate(self.matchers):
            if self.ended[i]:
                continue
            if drawn:
                try:
                    matcher.accept(int(input_ids[i, -1]))
                except GenerationError:  # padding after a row that stopped on a stop string
                    self.ended[i] = True
                    continue
            blocked = torch.from_numpy(matcher.blocked()[: scores.shape[-1]]).to(scores.device)
            scores[i].masked_fill_(blocked, float("-inf"))
        return scores
