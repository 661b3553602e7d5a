"""llama.cpp through llama-cpp-python's raw low-level API: the independent oracle for GGUF tests.

Nothing of adaptrix here: a model, a context, a batch, the logits, and LoRA
adapters set with ``llama_set_adapters_lora``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


class RawLlama:
    """One llama.cpp model + context on the CPU, one thread, logits for every prompt token."""

    def __init__(self, gguf_path: Path, n_ctx: int = 256, threads: int = 1):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        if _silent is not None:
            L.llama_log_set(_silent, ctypes.c_void_p(0))
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        # no AMX/repacked weight buffers: their kernels die with SIGILL on this sandbox (AMX not enabled)
        mp.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(str(gguf_path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.adapters: list = []

    def load_adapter(self, path: Path):
        adapter = self.L.llama_adapter_lora_init(self.model, str(path).encode())
        if not adapter:
            raise RuntimeError(f"llama.cpp could not load the LoRA {path}")
        self.adapters.append(adapter)
        return adapter

    def set_adapters(self, pairs: list[tuple[object, float]]) -> None:
        """Make exactly ``pairs`` (adapter, scale) active; an empty list removes every adapter."""
        L = self.L
        n = len(pairs)
        arr = (L.llama_adapter_lora_p_ctypes * max(n, 1))(*[a for a, _ in pairs])
        scales = (ctypes.c_float * max(n, 1))(*[s for _, s in pairs])
        rc = L.llama_set_adapters_lora(self.ctx, arr if n else None, n, scales if n else None)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora returned {rc}")

    def logits(self, tokens: list[int]) -> np.ndarray:
        """``(len(tokens), n_vocab)`` logits of one fresh forward pass over ``tokens``."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = len(tokens)
            rc = L.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
            for i in range(len(tokens)):
                ptr = L.llama_get_logits_ith(self.ctx, i)
                out[i] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
            return out
        finally:
            L.llama_batch_free(batch)

    def greedy(self, tokens: list[int], max_new: int, stop: set[int]) -> list[int]:
        """Greedy continuation of ``tokens`` (argmax each step), up to ``max_new`` tokens or a stop id."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        out: list[int] = []
        pending, pos = list(tokens), 0
        for _ in range(max_new):
            arr = (L.llama_token * len(pending))(*pending)  # kept alive until decode returns
            rc = L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(pending)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            pos += len(pending)
            row = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            nxt = int(row.argmax())
            if nxt in stop:
                break
            out.append(nxt)
            pending = [nxt]
        return out

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        L = self.L
        vocab = L.llama_model_get_vocab(self.model)
        data = text.encode()
        buf = (L.llama_token * (len(data) + 16))()
        n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), False, special)
        if n < 0:
            raise RuntimeError("tokenize buffer too small")
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        L = self.L
        vocab = L.llama_model_get_vocab(self.model)
        pieces = []
        for t in tokens:
            buf = ctypes.create_string_buffer(64)
            n = L.llama_token_to_piece(vocab, t, buf, len(buf), 0, False)
            pieces.append(buf.raw[:n])
        return b"".join(pieces).decode("utf-8", errors="replace")

    def eos_ids(self) -> set[int]:
        L = self.L
        vocab = L.llama_model_get_vocab(self.model)
        return {t for t in range(self.n_vocab) if L.llama_vocab_is_eog(vocab, t)}

    def close(self) -> None:
        L = self.L
        for a in self.adapters:
            L.llama_adapter_lora_free(a)
        self.adapters = []
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None


def _log(level, text, user_data):  # pragma: no cover - llama.cpp's log callback: keep test output clean
    return None


try:
    import llama_cpp as _L

    _silent = _L.llama_log_callback(_log)
except Exception:  # pragma: no cover - llama_cpp not installed: tests that need it skip
    _silent = None
