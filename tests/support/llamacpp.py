"""llama.cpp for the tests and benchmarks: the raw oracle, llama-cpp-python's own ``Llama``, tiny GGUF LoRAs.

- :class:`RawLlama`: the independent oracle for GGUF tests, llama.cpp through
  llama-cpp-python's raw low-level API (a model, a context, a batch, the
  logits and their log-probabilities; LoRA adapters set with
  ``llama_set_adapters_lora``). Nothing of adaptrix.
- :func:`raw_llama`: llama-cpp-python's high-level ``Llama``, loaded as
  adaptrix's LlamaRuntime loads a model: the baseline the benchmarks time
  (``bench/*.py``), and :func:`no_extra_buffers` for ``llama_cpp.server``.
- :func:`write_random_lora`: a GGUF LoRA with random weights for a base GGUF.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def no_extra_buffers():
    """Load models as LlamaRuntime does: without CPU repacking buffers (AMX kernels die with SIGILL in this VM)."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def raw_llama(path: Path, *, n_ctx: int, n_threads: int, **kwargs):
    """llama-cpp-python's high-level ``Llama`` on ``path``, configured like a LlamaRuntime with these sizes.

    The benchmarks' baseline (what a llama-cpp-python user runs); tests compare against :class:`RawLlama`.
    """
    from llama_cpp import Llama

    with no_extra_buffers():
        return Llama(
            str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False, **kwargs
        )


def write_random_lora(path: Path, base_gguf: Path, *, rank: int = 4, seed: int = 0, scale: float = 0.05,
                      targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down"), layers: range | None = None) -> Path:
    """A GGUF LoRA for ``base_gguf`` with random A/B on ``targets`` (llama.cpp's adapter layout).

    ``lora_a`` has ggml shape ``[n_in, rank]`` and ``lora_b`` ``[rank, n_out]``,
    as llama.cpp's ``convert_lora_to_gguf.py`` writes them.
    """
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in targets:
            continue
        if layers is not None and int(parts[1]) not in layers:
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])
        a = (rng.standard_normal((rank, n_in)) * scale).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * scale).astype(np.float32)
        writer.add_tensor(t.name + ".lora_a", a)
        writer.add_tensor(t.name + ".lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class RawLlama:
    """The oracle: one llama.cpp model + context on the CPU through the raw low-level API, nothing of adaptrix.

    Logits for every prompt token, greedy continuations, LoRA adapters set with
    ``llama_set_adapters_lora``. ``n_batch`` (default: ``n_ctx``, at most 512)
    bounds the tokens one call takes. Flash attention is off unless asked for,
    as in llama-cpp-python's ``Llama`` and adaptrix's runtime: its kernels sum in
    another order, and greedy answers drift apart within a few tokens.
    Use it as a context manager or ``close()`` it.
    """

    def __init__(self, gguf_path: Path, n_ctx: int = 256, threads: int = 1, n_batch: int | None = None,
                 flash_attn: bool = False):
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
        cp.n_batch = cp.n_ubatch = n_batch or min(n_ctx, 512)
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.adapters: list = []
        self._eos: set[int] | None = None

    def __enter__(self) -> "RawLlama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        """``(len(tokens), n_vocab)`` log-probabilities (float64 ``log_softmax`` of :meth:`logits`): row i scores
        ``tokens[i + 1]``."""
        x = self.logits(tokens).astype(np.float64)
        x -= x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    def greedy(self, tokens: list[int], max_new: int, stop: set[int] | None = None) -> list[int]:
        """Greedy continuation of ``tokens`` (argmax each step), up to ``max_new`` tokens or a stop id.

        ``stop`` defaults to the model's end-of-generation tokens; the stop id is not returned.
        """
        L = self.L
        stop = self.eos_ids() if stop is None else stop
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

    def greedy_logprobs(self, tokens: list[int], max_new: int) -> tuple[list[int], np.ndarray]:
        """Greedy continuation of ``tokens`` (no stop id) and, per generated token, the ``(n_vocab,)`` float64
        log-probabilities of the decode step that picked it: the logits llama.cpp itself samples from (one token
        per decode after the prompt; another matmul kernel than :meth:`logits`' one batch, so they differ a little)."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        out: list[int] = []
        rows = []
        pending = list(tokens)
        for _ in range(max_new):
            arr = (L.llama_token * len(pending))(*pending)
            if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(pending))) != 0:
                raise RuntimeError("llama_decode failed")
            x = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).astype(np.float64)
            x -= x.max()
            rows.append(x - np.log(np.exp(x).sum()))
            out.append(int(x.argmax()))
            pending = [out[-1]]
        return out, np.array(rows)

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
        """The model's end-of-generation token ids."""
        if self._eos is None:
            L = self.L
            vocab = L.llama_model_get_vocab(self.model)
            self._eos = {t for t in range(self.n_vocab) if L.llama_vocab_is_eog(vocab, t)}
        return self._eos

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
