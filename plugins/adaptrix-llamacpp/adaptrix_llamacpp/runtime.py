"""One llama.cpp model and its context, on llama-cpp-python's low-level (ctypes) API.

:class:`LlamaRuntime` owns a model, one context and the LoRA adapters loaded
on that model. The context holds one sequence unless :meth:`LlamaRuntime.set_max_sequences`
makes room for more (a step decoder's rows, :mod:`.steps`); every sequence has
the whole ``n_ctx`` in its own KV stream. It tokenizes, detokenizes piece by piece, reads
GGUF metadata, generates tokens with a sampler chain built per call, exposes
logits for tests, and sets the active adapters with per-adapter scales
(``llama_set_adapters_lora``, which only rebuilds when the set changes).

Sampling semantics follow transformers': ``temperature=0`` is greedy; else
the chain is repetition penalty (over the prompt and the generated tokens,
``logit / p`` when positive, ``logit * p`` when negative) -> temperature ->
top-k -> top-p -> a seeded draw, so one seed repeats one answer. A generation
is one sequence at a time, on sequence 0, which keeps the last prompt's keys and
values: the next generation decodes only what differs (``_prefill``).

Imports llama_cpp (and numpy for logits) only; never torch or transformers.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from adaptrix.errors import (
    AdapterError,
    AdapterFormatError,
    ContextOverflowError,
    EngineStateError,
    GenerationError,
    ModelLoadError,
)

logger = logging.getLogger("adaptrix.llamacpp")

#: Context size used when the caller gives none: the model's own, capped (the KV cache grows with it).
DEFAULT_MAX_CTX = 4096
#: Prompt tokens decoded again even when cached: a batch of one rounds differently (see ``_prefill``).
MIN_REDECODE = 2

#: llama.cpp's LLAMA_MAX_SEQ: the most sequences one context holds.
MAX_SEQUENCES = 256

#: Why a generation ended; ``generate_tokens``' generator returns it (``StopIteration.value``).
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"

#: ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line).
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_backend_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # the ctypes callback must outlive every llama.cpp call


def _llama():
    """The ``llama_cpp`` low-level module, with the backend initialised and its log routed to ``logging``."""
    global _backend_ready, _log_callback
    import llama_cpp

    if _backend_ready:
        return llama_cpp
    with _backend_lock:
        if not _backend_ready:
            last_level = [logging.INFO]

            @llama_cpp.llama_log_callback
            def forward(level, text, _user):
                # level 5 continues the previous line; llama.cpp logs INFO heavily, so it goes to DEBUG here.
                py_level = last_level[0] if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
                last_level[0] = py_level
                message = text.decode("utf-8", errors="replace").rstrip()
                if py_level >= logging.ERROR and message:
                    _recent_errors.append(message)
                if message:
                    logger.log(logging.DEBUG if py_level == logging.INFO else py_level, "%s", message)

            _log_callback = forward
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def _llama_said() -> str:
    """What llama.cpp logged as errors since the last call (empty when nothing)."""
    said = "; ".join(_recent_errors)
    _recent_errors.clear()
    return f" (llama.cpp: {said})" if said else ""


@attrs.frozen
class SpecialTokenIds:
    """The model's special token ids (None where the GGUF defines none)."""

    bos: int | None
    eos: int | None
    #: End of turn (``<|im_end|>``, ``<|eot_id|>``), when the vocabulary has one apart from EOS.
    eot: int | None
    pad: int | None
    unk: int | None
    #: Every end-of-generation token (EOS, EOT, ...): the default stop set.
    eog: frozenset[int]
    add_bos: bool
    add_eos: bool


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


@attrs.frozen(eq=False)
class LoraAdapter:
    """A GGUF LoRA loaded on a runtime's model; compare by identity."""

    path: Path
    #: ``adapter.lora.alpha`` etc. from the adapter GGUF's metadata.
    metadata: Mapping[str, str]
    _ptr: Any = attrs.field(repr=False)


class LlamaRuntime:
    """One GGUF model + one context; see the module docstring.

    ``n_ctx=None`` uses the model's context length capped at
    :data:`DEFAULT_MAX_CTX`; ``n_threads=None`` every CPU this process may use.
    ``flash_attn`` defaults off, as llama-cpp-python's ``Llama`` does.
    ``extra_buffers`` lets llama.cpp repack weights for CPU-specific kernels
    (AMX, ...); off by default: on CPUs that report AMX inside a VM that does
    not enable it (this project's machine), those kernels die with SIGILL.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        flash_attn: bool = False,
        extra_buffers: bool = False,
        n_seq_max: int = 1,
    ):
        self._ll = ll = _llama()
        self._model = self._ctx = None
        self._adapters: dict[int, LoraAdapter] = {}
        self._active: tuple[tuple[LoraAdapter, float], ...] = ()
        self._busy = False
        self._cached: list[int] = []  # the tokens whose keys and values sequence 0 of the context holds
        self._cached_with: tuple = ()  # the adapters (id, scale) they were computed with
        #: Prompt tokens the last generation took from the cache instead of decoding them.
        self.reused_tokens = 0
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._token_ids: dict[str, int] | None = None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"GGUF file {self.path} does not exist: check the path")
        _recent_errors.clear()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers
        model = ll.llama_model_load_from_file(str(self.path).encode("utf-8"), mparams)
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {self.path}{_llama_said()}: check that it is a complete GGUF model "
                "file of an architecture this llama.cpp supports"
            )
        self._model = model
        # What the finalizer frees: pointers only, never a reference to self (so GC can collect it).
        self._res: dict[str, Any] = {"model": model, "ctx": None, "adapters": {}}
        self._finalizer = weakref.finalize(self, _free, ll, self._res)
        self._vocab = ll.llama_model_get_vocab(model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        train_ctx = int(ll.llama_model_n_ctx_train(model))
        self.n_ctx = int(n_ctx) if n_ctx else min(train_ctx, DEFAULT_MAX_CTX)
        if n_batch < 1 or self.n_ctx < 1:
            raise GenerationError(f"n_ctx={n_ctx} and n_batch={n_batch} must be positive")
        self.n_batch = min(int(n_batch), self.n_ctx)
        threads = n_threads or _cpu_count()
        self._threads = (threads, n_threads_batch or threads)
        self._flash_attn = flash_attn
        self.n_seq_max = 0
        self._new_context(n_seq_max)
        self.special = self._special_ids()
        self.info = self._info(train_ctx)

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Free the context, the adapters and the model (idempotent; also runs on garbage collection)."""
        if self._busy:
            raise EngineStateError("cannot close the llama.cpp runtime while a generation runs on it")
        if self._model is None:
            return
        self._finalizer()  # runs _free once
        self._model = self._ctx = None
        self._adapters.clear()
        self._active = ()

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def __enter__(self) -> LlamaRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ctx is None:
            raise EngineStateError(f"the llama.cpp runtime for {self.path} is closed: load the model again")

    def _new_context(self, n_seq_max: int) -> None:
        """(Re)create the context with room for ``n_seq_max`` sequences of ``n_ctx`` tokens each.

        Each sequence gets its own KV stream (``kv_unified=False``), so a
        sequence's cells are laid out as if it were alone and its logits are
        bit-identical to the single-sequence path's; one unified buffer would
        interleave the sequences' cells, which changes the attention's sums
        (greedy answers drift within tens of tokens without flash attention).
        The price: the KV cache is ``n_seq_max`` times the single one.
        """
        ll = self._ll
        if not 1 <= n_seq_max <= MAX_SEQUENCES:
            raise GenerationError(f"n_seq_max={n_seq_max} must be between 1 and {MAX_SEQUENCES}")
        params = ll.llama_context_default_params()
        params.n_ctx = self.n_ctx * n_seq_max  # split evenly between the sequences' streams
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = n_seq_max
        params.kv_unified = False
        params.n_threads, params.n_threads_batch = self._threads
        params.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if self._flash_attn
                                  else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        old = self._ctx
        if old:
            self._ctx = self._res["ctx"] = None
            ll.llama_free(old)
        ctx = ll.llama_init_from_model(self._model, params)
        if not ctx:
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context of {self.n_ctx} tokens and {n_seq_max} sequence(s) for "
                f"{self.path}{_llama_said()}: lower n_ctx or the number of sequences"
            )
        self._ctx = self._res["ctx"] = ctx
        self._memory = ll.llama_get_memory(ctx)
        self._cached = []  # a new context remembers nothing
        self.n_seq_max = n_seq_max
        if int(ll.llama_n_ctx_seq(ctx)) < self.n_ctx:
            self.close()
            raise ModelLoadError(
                f"llama.cpp gave each of {n_seq_max} sequences {int(ll.llama_n_ctx_seq(ctx))} tokens of context, "
                f"not {self.n_ctx}: lower the number of sequences (max batch) or n_ctx"
            )
        active, self._active = self._active, ()  # the new context has none set yet
        if old and active:  # adapters belong to the model; the new context must be told which are active
            self.set_loras(active)

    def set_max_sequences(self, n_seq_max: int) -> None:
        """Make room for ``n_seq_max`` parallel sequences (ids ``0 .. n_seq_max - 1``) in one context.

        Sequence 0 is :meth:`generate_tokens`' own; a step decoder uses the others. Rebuilds the context
        when the number changes (its memory is lost; loaded and active adapters stay).
        """
        self._check_open()
        if self._busy:
            raise EngineStateError("cannot resize the llama.cpp context while a generation runs on it")
        if n_seq_max != self.n_seq_max:
            self._threads = (self.n_threads, int(self._ll.llama_n_threads_batch(self._ctx)))
            self._new_context(int(n_seq_max))

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        """Threads for decoding one token and for prompt batches."""
        self._check_open()
        if n_threads < 1:
            raise GenerationError(f"n_threads={n_threads} must be at least 1")
        self._ll.llama_set_n_threads(self._ctx, n_threads, n_threads_batch or n_threads)
        self._threads = (n_threads, n_threads_batch or n_threads)

    @property
    def n_threads(self) -> int:
        self._check_open()
        return int(self._ll.llama_n_threads(self._ctx))

    # ------------------------------------------------------------------ metadata

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text (``"general.architecture"``), or None when absent."""
        self._check_open()
        buf = ctypes.create_string_buffer(256)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode("utf-8"), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._ll.llama_model_meta_val_str(self._model, key.encode("utf-8"), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _info(self, train_ctx: int) -> GGUFInfo:
        ll = self._ll
        template = ll.llama_model_chat_template(self._model, None)
        desc = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self._model, desc, len(desc))
        return GGUFInfo(
            path=self.path,
            architecture=self.metadata("general.architecture") or "unknown",
            name=self.metadata("general.name"),
            context_length=train_ctx,
            chat_template=template.decode("utf-8") if template else None,
            n_vocab=self.n_vocab,
            n_params=int(ll.llama_model_n_params(self._model)),
            size_bytes=int(ll.llama_model_size(self._model)),
            description=desc.value.decode("utf-8", errors="replace"),
        )

    def _metadata_id(self, key: str) -> int | None:
        value = self.metadata(key)
        try:
            t = int(value) if value is not None else -1
        except ValueError:
            return None
        return t if 0 <= t < self.n_vocab else None

    def _special_ids(self) -> SpecialTokenIds:
        ll, v = self._ll, self._vocab

        def tid(fn) -> int | None:
            t = int(fn(v))
            return t if 0 <= t < self.n_vocab else None

        eog = frozenset(t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(v, t))
        return SpecialTokenIds(
            bos=tid(ll.llama_vocab_bos),
            eos=tid(ll.llama_vocab_eos),
            eot=tid(ll.llama_vocab_eot),
            pad=tid(ll.llama_vocab_pad),
            unk=self._metadata_id("tokenizer.ggml.unknown_token_id"),  # llama.cpp has no getter for it
            eog=eog,
            add_bos=bool(ll.llama_vocab_get_add_bos(v)),
            add_eos=bool(ll.llama_vocab_get_add_eos(v)),
        )

    # -------------------------------------------------------------- vocabulary

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS/EOS as the model asks, ``parse_special`` reads
        ``<|im_start|>`` as one control token instead of plain text."""
        self._check_open()
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            raise GenerationError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return list(buf[:n])

    def token_piece(self, token_id: int, *, special: bool = True) -> bytes:
        """The bytes one token stands for (possibly part of a UTF-8 character); ``special=False`` gives
        control tokens as empty bytes. For incremental detokenization: join, then decode."""
        key = (token_id, special)
        piece = self._pieces.get(key)
        if piece is None:
            self._check_token(token_id)
            buf = ctypes.create_string_buffer(64)
            n = self._ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def detokenize(self, ids: Sequence[int], *, special: bool = True) -> str:
        """Text of ``ids`` as llama.cpp writes it (it also drops an SPM tokenizer's leading space)."""
        self._check_open()
        for t in ids:
            self._check_token(t)
        arr = (self._ll.llama_token * max(len(ids), 1))(*ids)
        size = 16 + 8 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._ll.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n + 1

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry itself (``"Ġhello"``, ``"<|im_end|>"``)."""
        self._check_token(token_id)
        return self._ll.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry, or None when the vocabulary has no such entry."""
        self._check_open()
        if self._token_ids is None:
            self._token_ids = {self.token_text(t): t for t in reversed(range(self.n_vocab))}
        return self._token_ids.get(text)

    def is_control(self, token_id: int) -> bool:
        self._check_token(token_id)
        return bool(self._ll.llama_vocab_is_control(self._vocab, token_id))

    def _check_token(self, token_id: int) -> None:
        self._check_open()
        if not 0 <= int(token_id) < self.n_vocab:
            raise GenerationError(
                f"token id {token_id} is outside the vocabulary of {self.path.name} (0..{self.n_vocab - 1})"
            )

    # ---------------------------------------------------------------- decoding

    def _clear(self) -> None:
        """Empty sequence 0 (the single-sequence path's); other sequences belong to a step decoder."""
        if self.n_seq_max == 1:
            self._ll.llama_memory_clear(self._memory, False)
        else:
            self._ll.llama_memory_seq_rm(self._memory, 0, -1, -1)
        self._cached = []

    def forget_prompt(self) -> None:
        """Drop the cached prompt: the next generation decodes its whole prompt (benchmarks, fresh starts)."""
        self._check_open()
        if self._busy:
            raise EngineStateError("cannot clear the context while a generation runs on it")
        self._clear()

    def _lora_key(self) -> tuple:
        return tuple((id(a), float(s)) for a, s in self._active)

    def _prefill(self, ids: list[int]) -> None:
        """Decode the prompt, reusing the context's cached prefix when it was computed with the same adapters.

        A chat turn or a repeated system prompt then decodes only what is new, as
        llama.cpp's server does, and a reply never depends on what ran before it:
        llama.cpp computes a batch of one token differently from a batch of
        several (measured: logits apart by 0.34 on the embedded model; from two
        tokens on, bit-identical), so only prompt tokens are reused, never
        generated ones (each was decoded alone), and at least the last
        :data:`MIN_REDECODE` prompt tokens are decoded again, as one batch.
        """
        keep = 0
        if self._cached_with == self._lora_key():
            for a, b in zip(self._cached, ids[:-MIN_REDECODE]):
                if a != b:
                    break
                keep += 1
        # the cells after the cached prompt hold generated tokens: drop them too
        if keep and self._ll.llama_memory_seq_rm(self._memory, 0, keep, -1):
            del self._cached[keep:]
        else:
            self._clear()
            keep = 0
        self._cached_with = self._lora_key()
        self.reused_tokens = keep
        try:
            self._feed(ids[keep:])
        except BaseException:
            self._clear()
            raise
        self._cached.extend(ids[keep:])

    def _decode(self, batch) -> None:
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc == 1:
            raise ContextOverflowError(
                f"the context of {self.n_ctx} tokens is full: shorten the prompt, lower max_new_tokens or load "
                "the model with a larger n_ctx"
            )
        if rc != 0:
            raise GenerationError(f"llama_decode failed with code {rc}{_llama_said()}")

    def _feed(self, ids: Sequence[int]) -> None:
        """Decode ``ids`` in batches of ``n_batch``; the last one's logits are then ready."""
        ll = self._ll
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            arr = (ll.llama_token * len(chunk))(*chunk)
            self._decode(ll.llama_batch_get_one(arr, len(chunk)))

    def _check_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise GenerationError("the prompt has no tokens: pass at least one token")
        for t in ids:
            self._check_token(t)
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens and the context holds {self.n_ctx}: shorten the prompt or load "
                "the model with a larger n_ctx"
            )
        return ids

    def logits(self, prompt_ids: Sequence[int], *, all_positions: bool = False):
        """Logits after ``prompt_ids`` as a float32 numpy array: ``(n_vocab,)`` for the last position, or
        ``(len(prompt_ids), n_vocab)`` with ``all_positions`` (for comparing with another implementation)."""
        import numpy as np

        self._check_open()
        ids = self._check_prompt(prompt_ids)
        ll = self._ll
        self._clear()
        if not all_positions:
            self._feed(ids)
            return np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,)).copy()
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        batch = ll.llama_batch_init(self.n_batch, 0, 1)
        try:
            for start in range(0, len(ids), self.n_batch):
                chunk = ids[start : start + self.n_batch]
                batch.n_tokens = len(chunk)
                for i, t in enumerate(chunk):
                    batch.token[i] = t
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True
                self._decode(batch)
                for i in range(len(chunk)):
                    row = ll.llama_get_logits_ith(self._ctx, i)
                    out[start + i] = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        finally:
            ll.llama_batch_free(batch)
        return out

    def generate_tokens(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop_ids: Iterable[int] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[int]:
        """New token ids after ``prompt_ids``, one at a time.

        Stops after ``max_new_tokens``, at the context's end, at a token in
        ``stop_ids`` (default: the model's end-of-generation tokens; the stop
        token is not yielded), or when ``cancel()`` turns true (checked before
        each token). The generator's return value says why: ``"stop"``,
        ``"length"`` or ``"cancelled"``. Arguments are checked now; the work
        starts at the first ``next()``.
        """
        self._check_open()
        ids = self._check_prompt(prompt_ids)
        if max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens={max_new_tokens} must be 0 or more")
        if temperature < 0:
            raise GenerationError(f"temperature={temperature} must be 0 (greedy) or more")
        if not 0 < top_p <= 1:
            raise GenerationError(f"top_p={top_p} must be in (0, 1]")
        if top_k < 0:
            raise GenerationError(f"top_k={top_k} must be 0 (off) or more")
        if repetition_penalty <= 0:
            raise GenerationError(f"repetition_penalty={repetition_penalty} must be above 0 (1.0 is off)")
        stops = frozenset(self.special.eog if stop_ids is None else (int(t) for t in stop_ids))
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, penalty=repetition_penalty, seed=seed)
        return self._generate(ids, max_new_tokens, sampling, stops, cancel)

    def _sampler(self, prompt: list[int], temperature, top_p, top_k, penalty, seed):
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        try:
            if penalty != 1.0:
                stage = ll.llama_sampler_init_penalties(self.n_vocab, self.n_ctx, penalty, 0.0, 0.0)
                ll.llama_sampler_chain_add(chain, stage)
                for t in prompt:  # transformers penalises the prompt's tokens too
                    ll.llama_sampler_accept(chain, t)
            if temperature == 0:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
                return chain
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
            if top_k:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(top_k))
            if top_p < 1.0:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(top_p, 1))
            draw_seed = ll.LLAMA_DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(draw_seed))
            return chain
        except BaseException:
            ll.llama_sampler_free(chain)
            raise

    def _generate(self, ids: list[int], max_new_tokens: int, sampling: dict, stops: frozenset[int], cancel):
        if self._busy:
            raise EngineStateError(
                "a generation is already running on this llama.cpp context: finish or close it first"
            )
        self._check_open()
        ll, ctx = self._ll, self._ctx
        self._busy = True
        chain = None
        try:
            chain = self._sampler(ids, **sampling)
            if cancel is not None and cancel():
                return FINISH_CANCELLED
            self._prefill(ids)
            room = self.n_ctx - len(ids)
            one = (ll.llama_token * 1)()
            step = ll.llama_batch_get_one(one, 1)
            for produced in range(max_new_tokens):
                token = ll.llama_sampler_sample(chain, ctx, -1)
                if token in stops:
                    return FINISH_STOP
                yield token
                if produced + 1 == max_new_tokens:
                    break
                if produced + 1 >= room:
                    return FINISH_LENGTH
                if cancel is not None and cancel():
                    return FINISH_CANCELLED
                one[0] = token
                self._decode(step)
            return FINISH_LENGTH
        finally:
            if chain is not None:
                ll.llama_sampler_free(chain)
            self._busy = False

    # ------------------------------------------------------ parallel sequences

    def sampler(self, prompt_ids: Sequence[int], *, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                repetition_penalty: float = 1.0, seed: int | None = None) -> SamplerChain:
        """A sampler chain for one sequence, as :meth:`generate_tokens` builds it (the prompt counts for the
        repetition penalty); :meth:`SamplerChain.sample` draws from a decoded position's logits."""
        self._check_open()
        chain = self._sampler(list(prompt_ids), temperature, top_p, top_k, repetition_penalty, seed)
        return SamplerChain(self, chain)

    def decode_sequences(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
                         logits: Sequence[bool]) -> None:
        """One ``llama_decode`` of tokens at positions of sequences (at most ``n_batch`` tokens), with the
        active adapters. The logits of token ``i`` (where ``logits[i]``) are then ready for
        :meth:`SamplerChain.sample(i) <SamplerChain.sample>`. Sequence ids are ``1 .. n_seq_max - 1``:
        sequence 0 is :meth:`generate_tokens`' own."""
        self._check_open()
        if self._busy:
            raise EngineStateError("a generation is running on sequence 0 of this context: finish or close it first")
        n = len(tokens)
        if not 0 < n <= self.n_batch:
            raise GenerationError(f"decode_sequences takes 1 to n_batch={self.n_batch} tokens, got {n}")
        for seq in seq_ids:
            if not 0 < seq < self.n_seq_max:
                raise GenerationError(
                    f"sequence id {seq} is outside 1..{self.n_seq_max - 1}: set_max_sequences({seq + 1}) first"
                )
        batch = self._res.get("batch")
        if batch is None:
            batch = self._res["batch"] = self._ll.llama_batch_init(self.n_batch, 0, 1)
        batch.n_tokens = n
        for i in range(n):
            batch.token[i] = tokens[i]
            batch.pos[i] = positions[i]
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_ids[i]
            batch.logits[i] = bool(logits[i])
        self._decode(batch)

    def forget_sequence(self, seq_id: int) -> None:
        """Free every KV cell of sequence ``seq_id``."""
        self._check_open()
        self._ll.llama_memory_seq_rm(self._memory, int(seq_id), -1, -1)

    # -------------------------------------------------------------------- LoRA

    def load_lora(self, path: str | os.PathLike) -> LoraAdapter:
        """Load a GGUF LoRA file onto this model (not yet active: see :meth:`set_loras`)."""
        self._check_open()
        path = Path(path)
        if not path.is_file():
            raise AdapterError(f"GGUF LoRA file {path} does not exist: check the path")
        _recent_errors.clear()
        ptr = self._ll.llama_adapter_lora_init(self._model, str(path).encode("utf-8"))
        if not ptr:
            raise AdapterFormatError(
                f"llama.cpp refused the LoRA {path} for {self.path.name}{_llama_said()}: it must be a GGUF LoRA "
                f"made for this model's architecture ({self.info.architecture}) and shapes"
            )
        adapter = LoraAdapter(path=path, metadata=self._adapter_metadata(ptr), ptr=ptr)
        self._adapters[id(adapter)] = adapter
        self._res["adapters"][id(adapter)] = ptr
        return adapter

    def _adapter_metadata(self, ptr) -> dict[str, str]:
        ll, out = self._ll, {}
        for i in range(int(ll.llama_adapter_meta_count(ptr))):
            key, val = ctypes.create_string_buffer(256), ctypes.create_string_buffer(1024)
            if ll.llama_adapter_meta_key_by_index(ptr, i, key, len(key)) >= 0:
                if ll.llama_adapter_meta_val_str_by_index(ptr, i, val, len(val)) >= 0:
                    out[key.value.decode("utf-8", "replace")] = val.value.decode("utf-8", "replace")
        return out

    def set_loras(self, scales: Mapping[LoraAdapter, float] | Sequence[tuple[LoraAdapter, float]]) -> None:
        """Make exactly these adapters active, each with its scale (empty: the base model)."""
        self._check_open()
        pairs = tuple(scales.items() if isinstance(scales, Mapping) else scales)
        for adapter, _ in pairs:
            if self._adapters.get(id(adapter)) is not adapter:
                raise AdapterError(f"LoRA {adapter.path} is not loaded on {self.path.name}: load_lora it first")
        if pairs == self._active:
            return  # already set: no call, so nothing for llama.cpp to rebuild
        if self._busy:
            raise EngineStateError("cannot change adapters while a generation runs on this context")
        ll, n = self._ll, len(pairs)
        ptrs = (ll.llama_adapter_lora_p_ctypes * max(n, 1))(*(a._ptr for a, _ in pairs))
        vals = (ctypes.c_float * max(n, 1))(*(float(s) for _, s in pairs))
        if ll.llama_set_adapters_lora(self._ctx, ptrs, n, vals) != 0:
            raise AdapterError(f"llama.cpp could not activate {n} LoRA adapter(s) on {self.path.name}{_llama_said()}")
        self._active = pairs

    @property
    def active_loras(self) -> tuple[tuple[LoraAdapter, float], ...]:
        return self._active

    @property
    def loaded_loras(self) -> tuple[LoraAdapter, ...]:
        return tuple(self._adapters.values())

    def unload_lora(self, adapter: LoraAdapter) -> None:
        """Deactivate (when active) and free one adapter."""
        self._check_open()
        if self._adapters.get(id(adapter)) is not adapter:
            raise AdapterError(f"LoRA {adapter.path} is not loaded on {self.path.name}")
        if any(a is adapter for a, _ in self._active):
            self.set_loras([(a, s) for a, s in self._active if a is not adapter])
        if any(key == id(adapter) for key, _ in self._cached_with):
            self._cached, self._cached_with = [], ()  # its id may name another adapter later
        del self._adapters[id(adapter)]
        del self._res["adapters"][id(adapter)]
        self._ll.llama_adapter_lora_free(adapter._ptr)


class SamplerChain:
    """A llama.cpp sampler chain (freed by :meth:`close` or garbage collection)."""

    def __init__(self, runtime: LlamaRuntime, ptr):
        self._runtime = runtime
        self._ptr = ptr
        self._finalizer = weakref.finalize(self, runtime._ll.llama_sampler_free, ptr)

    def sample(self, index: int = -1) -> int:
        """The token drawn from the logits of the last decode's ``index``-th token (and accepted by the chain)."""
        rt = self._runtime
        rt._check_open()
        return int(rt._ll.llama_sampler_sample(self._ptr, rt._ctx, index))

    def close(self) -> None:
        self._finalizer()


def _free(ll, res: dict) -> None:
    """Free context, adapters, model in that order (the runtime's finalizer: it holds no runtime reference)."""
    ctx, adapters, model = res.pop("ctx", None), res.pop("adapters", {}), res.pop("model", None)
    batch = res.pop("batch", None)
    if batch is not None:
        ll.llama_batch_free(batch)
    if ctx:
        ll.llama_free(ctx)
    for ptr in adapters.values():
        ll.llama_adapter_lora_free(ptr)
    if model:
        ll.llama_model_free(model)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
