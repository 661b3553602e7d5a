"""What every step-level decoder shares: when a row ends, and adding rows one by one."""

from __future__ import annotations

from typing import Any, Sequence

from adaptrix.generation.result import PreparedRequest
from adaptrix.generation.text import TextPipeline


def row_finish(prepared: PreparedRequest, generated: Sequence[int], pipeline: TextPipeline) -> str | None:
    """Why a step-decoded row ends after its last token (``eos``, ``stop``, ``length``), or ``None``.

    The one rule for step decoders (:mod:`adaptrix.backends.transformers.batching`, backends' own), as ``generate`` ends a row.
    """
    if generated and generated[-1] in prepared.eos_ids:
        return "eos"
    if pipeline.stopped:
        return "stop"
    if len(generated) >= prepared.settings.max_new_tokens:
        return "length"
    return None


def add_each(decoder, items: Sequence[tuple[Any, PreparedRequest, str | None]]) -> list:
    """``decoder.add(key, prepared, adapter)`` for each item, in order: ``(row, text)`` or the exception
    that item raised. A step decoder's ``add_many`` where prompts are not prefilled together."""
    out: list = []
    for key, prepared, adapter in items:
        try:
            out.append(decoder.add(key, prepared, adapter))
        except Exception as exc:
            out.append(exc)
    return out
