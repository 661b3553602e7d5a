"""Convert a PEFT adapter to a GGUF LoRA once, cached by content hash beside the GGUF cache.

Layout, under adaptrix's cache root (:func:`adaptrix.storage.caches.cache_root`)::

    lora/<sha256>.gguf

The key hashes the adapter's ``adapter_config.json`` and weights, the base
GGUF's fingerprint (architecture, name, head counts, every tensor's name and
shape: all a conversion depends on; no 100 MB hash), the output dtype and the
converter's format version. Editing the adapter or switching to a base of
another shape gives a new key; the same adapter on a requantized copy of the
same model reuses the file.

Files are written through :func:`adaptrix.storage.files.atomic_file` (a temporary
sibling renamed into place), so a crash or a full disk never leaves a file a
later load would trust; temporaries a killed conversion left are removed by
the next conversion. The folder has a size budget (:data:`LORA_CACHE`,
``ADAPTRIX_LORA_CACHE_SIZE``, default :data:`DEFAULT_BUDGET`): after each
conversion the least recently used files go until it fits. A reused file is
marked used; llama.cpp reads a LoRA into memory when it loads it, so evicting
the file of a loaded adapter only means converting it again on a later load.

This module imports no numerical library: ``adaptrix cache`` reads
:data:`LORA_CACHE` through the plugin's ``caches`` hook.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from adaptrix.adapters.info import CONFIG_FILE, WEIGHTS_FILE
from adaptrix.storage.caches import CacheKind, cache_dir, cache_writing, enforce_budget, touch
from adaptrix.errors import AdapterFormatError
from adaptrix.storage.files import remove_stale

from .gguf_index import read_gguf_model

#: Bump when the converter's output changes for the same input.
FORMAT_VERSION = 1
#: The budget when ADAPTRIX_LORA_CACHE_SIZE is unset: about 200 SmolLM2-135M adapters (rank 8, all linear
#: layers, 9.4 MB each in f32), or a dozen rank-16 all-linear adapters of a 7B model (~160 MB each).
DEFAULT_BUDGET = 2 << 30

LORA_CACHE = CacheKind(
    name="lora",
    folder="lora",
    summary="PEFT adapters converted to GGUF LoRAs for the llama.cpp backend",
    budget_env="ADAPTRIX_LORA_CACHE_SIZE",
    default_budget=DEFAULT_BUDGET,
    is_entry=lambda p: p.name.endswith(".gguf") and not p.name.startswith("."),
)


def lora_root() -> Path:
    return LORA_CACHE.root


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
    """The GGUF LoRA of ``adapter_dir`` for ``base_gguf``, converting (and validating) it on first use.

    Raises :class:`~adaptrix.errors.StorageError` when the cache cannot take the file (full disk,
    read-only, ``ADAPTRIX_CACHE`` not a folder), naming the folder and what to do.
    """
    from .convert import peft_to_gguf_lora  # numpy: not when the cache is only listed or cleared

    path = lora_root() / f"{lora_key(adapter_dir, base_gguf, dtype)}.gguf"
    if path.is_file():
        touch(path)
        return path
    LORA_CACHE.budget()  # a bad ADAPTRIX_LORA_CACHE_SIZE fails before any work
    remove_stale(cache_dir(LORA_CACHE))
    out = peft_to_gguf_lora(
        adapter_dir, base_gguf, path, progress=progress, dtype=dtype, name=name,
        writing=cache_writing(f"write the GGUF LoRA of adapter {name or Path(adapter_dir).name!r} to"),
    )
    enforce_budget(LORA_CACHE, keep=[out])
    return out
