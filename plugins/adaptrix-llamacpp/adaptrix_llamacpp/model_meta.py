"""What a loaded llama.cpp model's GGUF file says about it: metadata values and a summary.

Read through llama.cpp from the model it loaded (:mod:`.gguf_index` reads a
GGUF header without llama.cpp instead, for converting adapters).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import attrs


@attrs.frozen
class GGUFInfo:
    """What the GGUF file says about the model."""

    path: Path
    architecture: str
    name: str | None
    context_length: int
    chat_template: str | None
    n_vocab: int
    n_params: int
    size_bytes: int
    description: str


def read_metadata(ll, model, key: str) -> str | None:
    """A GGUF metadata value of ``model`` as text (``"general.architecture"``), or None when absent."""
    buf = ctypes.create_string_buffer(256)
    n = ll.llama_model_meta_val_str(model, key.encode("utf-8"), buf, len(buf))
    if n < 0:
        return None
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        ll.llama_model_meta_val_str(model, key.encode("utf-8"), buf, len(buf))
    return buf.value.decode("utf-8", errors="replace")


def read_info(ll, model, path: Path, *, n_vocab: int) -> GGUFInfo:
    """The :class:`GGUFInfo` of a loaded model."""
    template = ll.llama_model_chat_template(model, None)
    desc = ctypes.create_string_buffer(256)
    ll.llama_model_desc(model, desc, len(desc))
    return GGUFInfo(
        path=path,
        architecture=read_metadata(ll, model, "general.architecture") or "unknown",
        name=read_metadata(ll, model, "general.name"),
        context_length=int(ll.llama_model_n_ctx_train(model)),
        chat_template=template.decode("utf-8") if template else None,
        n_vocab=n_vocab,
        n_params=int(ll.llama_model_n_params(model)),
        size_bytes=int(ll.llama_model_size(model)),
        description=desc.value.decode("utf-8", errors="replace"),
    )
