"""Token-id prompts: the one check that a list of ids is something the model's vocabulary holds."""

from __future__ import annotations

from typing import Any, Sequence

from adaptrix.errors import GenerationError


def vocabulary_size(tokenizer: Any) -> int:
    """How many token ids ``tokenizer`` knows (added tokens included: ``len()`` of a transformers tokenizer,
    ``vocab_size`` of one without ``len()``)."""
    try:
        return len(tokenizer)
    except TypeError:
        return int(tokenizer.vocab_size)


def is_token_ids(value: Any) -> bool:
    """``value`` is a list or tuple of whole numbers (``bool`` excluded), possibly empty."""
    return isinstance(value, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def check_token_ids(ids: Sequence[int], tokenizer: Any, what: str = "prompt") -> tuple[int, ...]:
    """``ids`` as a tuple when every id is in ``tokenizer``'s vocabulary and there is at least one; else
    :class:`GenerationError` naming ``what``, the position and the value."""
    if not is_token_ids(ids):
        raise GenerationError(f"{what} must be a list of token ids (whole numbers), got {ids!r:.80}")
    if not ids:
        raise GenerationError(f"{what} is an empty list of token ids; give at least one")
    size = vocabulary_size(tokenizer)
    for i, token in enumerate(ids):
        if not 0 <= token < size:
            raise GenerationError(f"{what}[{i}] is token id {token}, outside the model's vocabulary of {size} "
                                  f"tokens (0..{size - 1})")
    return tuple(int(i) for i in ids)
