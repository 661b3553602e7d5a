"""Convert a PEFT adapter to a GGUF LoRA once, cached by content hash beside the GGUF cache.

Layout, under adaptrix's cache root (:func:`adaptrix.gguf_cache.cache_root`)::

    lora/<sha256>.gguf

The key hashes the adapter's ``adapter_config.json`` and weights, the base
GGUF's fingerprint (architecture, name, head counts, every tensor's name and
shape: all a conversion depends on; no 100 MB hash), the output dtype and the
converter's format version. Editing the adapter or switching to a base of
another shape gives a new key; the same adapter on a requantized copy of the
same model reuses the file. Files are written to a temporary sibling and
renamed into place, so a crash never leaves a file a later load would trust.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from adaptrix.adapters.info import CONFIG_FILE, WEIGHTS_FILE
from adaptrix.errors import AdapterFormatError
from adaptrix.gguf_cache import cache_root

from .convert import peft_to_gguf_lora
from .gguf_index import read_gguf_model

#: Bump when the converter's output changes for the same input.
FORMAT_VERSION = 1


def lora_root() -> Path:
    return cache_root() / "lora"


def lora_key(adapter_dir: str | os.PathLike, base_gguf: str | os.PathLike, dtype: str = "f32") -> str:
    """The cache key of converting ``adapter_dir`` for ``base_gguf``."""
    folder = Path(adapter_dir).expanduser()
    h = hashlib.sha256(f"adaptrix-lora|{FORMAT_VERSION}|{dtype}\n".encode())
    for fname in (CONFIG_FILE, WEIGHTS_FILE):
        path = folder / fname
        try:
            with open(path, "rb") as fh:
                h.update(f"{fname}\n".encode())
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        except OSError as exc:
            raise AdapterFormatError(
                f"adapter {folder.name!r}: cannot read {path}: {exc.strerror or exc}; an adapter folder needs "
                f"{CONFIG_FILE} and {WEIGHTS_FILE}"
            ) from exc
    h.update(read_gguf_model(base_gguf).fingerprint().encode())
    return h.hexdigest()


def cached_lora(
    adapter_dir: str | os.PathLike,
    base_gguf: str | os.PathLike,
    *,
    progress: bool = True,
    dtype: str = "f32",
    name: str | None = None,
) -> Path:
    """The GGUF LoRA of ``adapter_dir`` for ``base_gguf``, converting (and validating) it on first use."""
    path = lora_root() / f"{lora_key(adapter_dir, base_gguf, dtype)}.gguf"
    if path.is_file():
        return path
    return peft_to_gguf_lora(adapter_dir, base_gguf, path, progress=progress, dtype=dtype, name=name)
