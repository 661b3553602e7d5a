"""GGUF LoRA adapters on a llama.cpp model: loaded once, made active on the context with per-adapter scales.

:class:`LoraAdapters` is the runtime's (``LlamaRuntime.loras``): it loads and
frees adapters on the model and sets which of them, with which scales, the
context decodes with (``llama_set_adapters_lora``, which llama.cpp only
rebuilds for when the set changes). :class:`~.runtime.LlamaRuntime` keeps
``load_lora``, ``set_loras`` and ``unload_lora`` as its own methods: they also
guard a running generation and the runtime's cached prompt.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from adaptrix.errors import AdapterError, AdapterFormatError

from .llama_lib import forget_errors, llama_said

#: ``(adapter, scale)`` pairs: what a context decodes with.
Scales = tuple[tuple["LoraAdapter", float], ...]


@attrs.frozen(eq=False)
class LoraAdapter:
    """A GGUF LoRA loaded on a runtime's model; compare by identity."""

    path: Path
    #: ``adapter.lora.alpha`` etc. from the adapter GGUF's metadata.
    metadata: Mapping[str, str]
    _ptr: Any = attrs.field(repr=False)


class LoraAdapters:
    """The LoRAs loaded on one model, and the set the context uses.

    ``pointers`` is the runtime finalizer's dict of adapter pointers (freed
    with the model if nobody unloads them); ``path`` and ``architecture`` name
    the model in messages.
    """

    def __init__(self, ll, model, pointers: dict[int, Any], *, path: Path, architecture: str):
        self._ll = ll
        self._model = model
        self._pointers = pointers
        self._path = path
        self._architecture = architecture
        self._loaded: dict[int, LoraAdapter] = {}
        #: The pairs set on the context now (empty: the base model).
        self.active: Scales = ()

    @property
    def loaded(self) -> tuple[LoraAdapter, ...]:
        return tuple(self._loaded.values())

    def key(self) -> tuple:
        """The active set as plain values, for remembering what a cached prompt was computed with."""
        return tuple((id(a), float(s)) for a, s in self.active)

    def load(self, path: str | os.PathLike) -> LoraAdapter:
        """Load a GGUF LoRA file onto the model (not yet active: see :meth:`apply`)."""
        path = Path(path)
        if not path.is_file():
            raise AdapterError(f"GGUF LoRA file {path} does not exist: check the path")
        forget_errors()
        ptr = self._ll.llama_adapter_lora_init(self._model, str(path).encode("utf-8"))
        if not ptr:
            raise AdapterFormatError(
                f"llama.cpp refused the LoRA {path} for {self._path.name}{llama_said()}: it must be a GGUF LoRA "
                f"made for this model's architecture ({self._architecture}) and shapes"
            )
        adapter = LoraAdapter(path=path, metadata=self._metadata(ptr), ptr=ptr)
        self._loaded[id(adapter)] = adapter
        self._pointers[id(adapter)] = ptr
        return adapter

    def _metadata(self, ptr) -> dict[str, str]:
        ll, out = self._ll, {}
        for i in range(int(ll.llama_adapter_meta_count(ptr))):
            key, val = ctypes.create_string_buffer(256), ctypes.create_string_buffer(1024)
            if ll.llama_adapter_meta_key_by_index(ptr, i, key, len(key)) >= 0:
                if ll.llama_adapter_meta_val_str_by_index(ptr, i, val, len(val)) >= 0:
                    out[key.value.decode("utf-8", "replace")] = val.value.decode("utf-8", "replace")
        return out

    def check_loaded(self, adapter: LoraAdapter, hint: str = "") -> None:
        if self._loaded.get(id(adapter)) is not adapter:
            raise AdapterError(f"LoRA {adapter.path} is not loaded on {self._path.name}{hint}")

    def pairs(self, scales: Mapping[LoraAdapter, float] | Sequence[tuple[LoraAdapter, float]]) -> Scales:
        """``scales`` as pairs of loaded adapters (raises :class:`AdapterError` for one not loaded here)."""
        pairs = tuple(scales.items() if isinstance(scales, Mapping) else scales)
        for adapter, _ in pairs:
            self.check_loaded(adapter, ": load_lora it first")
        return pairs

    def apply(self, ctx, pairs: Scales) -> None:
        """Make exactly ``pairs`` active on the context ``ctx``."""
        ll, n = self._ll, len(pairs)
        ptrs = (ll.llama_adapter_lora_p_ctypes * max(n, 1))(*(a._ptr for a, _ in pairs))
        vals = (ctypes.c_float * max(n, 1))(*(float(s) for _, s in pairs))
        if ll.llama_set_adapters_lora(ctx, ptrs, n, vals) != 0:
            raise AdapterError(f"llama.cpp could not activate {n} LoRA adapter(s) on {self._path.name}{llama_said()}")
        self.active = pairs

    def free(self, adapter: LoraAdapter) -> None:
        """Free an adapter that is loaded and no longer active."""
        del self._loaded[id(adapter)]
        del self._pointers[id(adapter)]
        self._ll.llama_adapter_lora_free(adapter._ptr)

    def close(self) -> None:
        """Forget every adapter (the runtime's finalizer frees their pointers with the model)."""
        self._loaded.clear()
        self.active = ()
