"""The adaptrix hook implementations of the llama.cpp distribution.

Registered through the entry point ``llamacpp = "adaptrix_llamacpp"`` (the
package re-exports these functions). Importing this module imports neither
llama.cpp, numpy nor gguf: the work happens inside the callables.
"""

from __future__ import annotations

from pathlib import Path

from adaptrix import hookimpl
from adaptrix.adapters.convert import AdapterConverter
from adaptrix.models.modelconfig import read_gguf_metadata

from .backend import LlamaCppBackend
from .lora_cache import LORA_CACHE

GGUF_MAGIC = b"GGUF"


def _is_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file (its first four bytes), whatever its name."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _is_gguf_lora(path: Path) -> bool:
    """Whether ``path`` is a GGUF LoRA (``general.type`` "adapter"), not a GGUF model; header only."""
    try:
        return read_gguf_metadata(path, wanted=("general.type",)).get("general.type") == "adapter"
    except (OSError, ValueError):
        return False


def _peft_to_gguf(adapter_dir, out_path, *, base, dtype, progress):
    from .convert import peft_to_gguf_lora  # numpy: never at discovery

    return peft_to_gguf_lora(adapter_dir, base, out_path, progress=progress, dtype=dtype)


def _gguf_to_peft(path, out_dir, *, base, progress):
    from .convert import gguf_lora_to_peft  # numpy: never at discovery

    return gguf_lora_to_peft(path, out_dir, base_gguf=base, progress=progress)


@hookimpl
def adapter_converters():
    return [
        AdapterConverter(
            format="gguf-lora",
            suffixes=(".gguf",),
            from_peft=_peft_to_gguf,
            to_peft=_gguf_to_peft,
            recognizes=_is_gguf,
            is_adapter=_is_gguf_lora,
            dtypes=("f32", "f16"),
            summary="GGUF LoRA, as llama.cpp and Ollama load it",
        )
    ]


@hookimpl
def caches():
    return [LORA_CACHE]


@hookimpl
def backends():
    return [LlamaCppBackend()]
