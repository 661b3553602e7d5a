"""One llama.cpp model and its context, on llama-cpp-python's low-level (ctypes) API.

:class:`LlamaRuntime` owns a model and one context, and decodes on it. The
context holds one sequence unless :meth:`LlamaRuntime.set_max_sequences` makes
room for more (a step decoder's rows, :mod:`.steps`); every sequence has the
whole ``n_ctx`` in its own KV stream. It reads GGUF metadata, generates tokens
with a sampler chain built per call (:mod:`.sampling`), decodes parallel
sequences, and exposes logits. Its parts, each with its own module:

- ``runtime.vocab``, a :class:`~.vocab.Vocabulary`: tokenize, detokenize piece
  by piece, special and control tokens (the runtime's ``tokenize``,
  ``detokenize``, ``token_piece``, ... ask it);
- ``runtime.loras``, :class:`~.loras.LoraAdapters`: the GGUF LoRAs loaded on the
  model and the active set with per-adapter scales (``load_lora``,
  ``set_loras``, ``unload_lora`` here guard a running generation and the
  cached prompt).

A generation is one sequence at a time, on sequence 0, which keeps the last
prompt's keys and values: the next generation decodes only what differs
(``_prefill``).

Imports llama_cpp (and numpy for logits) only; never torch or transformers.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adaptrix.errors import ContextOverflowError, EngineStateError, GenerationError, ModelLoadError

from .llama_lib import closed_error, cpu_count, forget_errors, llama_said, load_llama
from .loras import LoraAdapter, LoraAdapters, Scales
from .model_meta import read_info, read_metadata
from .prompt_cache import PromptCache
from .sampling import SamplerChain, check_sampling, new_chain
from .vocab import Vocabulary

#: Context size used when the caller gives none: the model's own, capped (the KV cache grows with it).
DEFAULT_MAX_CTX = 4096

#: llama.cpp's LLAMA_MAX_SEQ: the most sequences one context holds.
MAX_SEQUENCES = 256

#: Why a generation ended; ``generate_tokens``' generator returns it (``StopIteration.value``).
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


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
        self._ll = ll = load_llama()
        self._model = self._ctx = None
        self._busy = False
        self._prompt_cache = PromptCache()  # what sequence 0 of the context holds
        #: Prompt tokens the last generation took from the cache instead of decoding them.
        self.reused_tokens = 0
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"GGUF file {self.path} does not exist: check the path")
        forget_errors()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers
        model = ll.llama_model_load_from_file(str(self.path).encode("utf-8"), mparams)
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {self.path}{llama_said()}: check that it is a complete GGUF model "
                "file of an architecture this llama.cpp supports"
            )
        self._model = model
        # What the finalizer frees: pointers only, never a reference to self (so GC can collect it).
        self._res: dict[str, Any] = {"model": model, "ctx": None, "adapters": {}}
        self._finalizer = weakref.finalize(self, _free, ll, self._res)
        self.vocab = Vocabulary(ll, ll.llama_model_get_vocab(model), path=self.path, metadata=self.metadata)
        self.n_vocab = self.vocab.n_vocab
        self.special = self.vocab.special
        self.info = read_info(ll, model, self.path, n_vocab=self.n_vocab)
        train_ctx = self.info.context_length
        self.loras = LoraAdapters(ll, model, self._res["adapters"], path=self.path,
                                  architecture=self.info.architecture)
        self.n_ctx = int(n_ctx) if n_ctx else min(train_ctx, DEFAULT_MAX_CTX)
        if n_batch < 1 or self.n_ctx < 1:
            raise GenerationError(f"n_ctx={n_ctx} and n_batch={n_batch} must be positive")
        self.n_batch = min(int(n_batch), self.n_ctx)
        threads = n_threads or cpu_count()
        self._threads = (threads, n_threads_batch or threads)
        self._flash_attn = flash_attn
        self.n_seq_max = 0
        self._new_context(n_seq_max)

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Free the context, the adapters and the model (idempotent; also runs on garbage collection)."""
        if self._busy:
            raise EngineStateError("cannot close the llama.cpp runtime while a generation runs on it")
        if self._model is None:
            return
        self._finalizer()  # runs _free once
        self._model = self._ctx = None
        self.vocab.close()
        self.loras.close()

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def __enter__(self) -> LlamaRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ctx is None:
            raise closed_error(self.path)

    def _live_context(self):
        """The context pointer (raises once closed): what a :class:`~.sampling.SamplerChain` samples from."""
        self._check_open()
        return self._ctx

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
                f"{self.path}{llama_said()}: lower n_ctx or the number of sequences"
            )
        self._ctx = self._res["ctx"] = ctx
        self._memory = ll.llama_get_memory(ctx)
        self._prompt_cache.clear()  # a new context remembers nothing
        self.n_seq_max = n_seq_max
        if int(ll.llama_n_ctx_seq(ctx)) < self.n_ctx:
            self.close()
            raise ModelLoadError(
                f"llama.cpp gave each of {n_seq_max} sequences {int(ll.llama_n_ctx_seq(ctx))} tokens of context, "
                f"not {self.n_ctx}: lower the number of sequences (max batch) or n_ctx"
            )
        active, self.loras.active = self.loras.active, ()  # the new context has none set yet
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
        if self._model is None:
            raise closed_error(self.path)
        return read_metadata(self._ll, self._model, key)

    # ------------------------------------------------- vocabulary (self.vocab's)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """:meth:`Vocabulary.tokenize <.vocab.Vocabulary.tokenize>`."""
        return self.vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_piece(self, token_id: int, *, special: bool = True) -> bytes:
        """:meth:`Vocabulary.token_piece <.vocab.Vocabulary.token_piece>`."""
        return self.vocab.token_piece(token_id, special=special)

    def detokenize(self, ids: Sequence[int], *, special: bool = True) -> str:
        """:meth:`Vocabulary.detokenize <.vocab.Vocabulary.detokenize>`."""
        return self.vocab.detokenize(ids, special=special)

    def token_text(self, token_id: int) -> str:
        """:meth:`Vocabulary.token_text <.vocab.Vocabulary.token_text>`."""
        return self.vocab.token_text(token_id)

    def token_id(self, text: str) -> int | None:
        """:meth:`Vocabulary.token_id <.vocab.Vocabulary.token_id>`."""
        return self.vocab.token_id(text)

    def is_control(self, token_id: int) -> bool:
        """:meth:`Vocabulary.is_control <.vocab.Vocabulary.is_control>`."""
        return self.vocab.is_control(token_id)

    # ---------------------------------------------------------------- decoding

    def _clear(self) -> None:
        """Empty sequence 0 (the single-sequence path's); other sequences belong to a step decoder."""
        if self.n_seq_max == 1:
            self._ll.llama_memory_clear(self._memory, False)
        else:
            self._ll.llama_memory_seq_rm(self._memory, 0, -1, -1)
        self._prompt_cache.clear()

    def forget_prompt(self) -> None:
        """Drop the cached prompt: the next generation decodes its whole prompt (benchmarks, fresh starts)."""
        self._check_open()
        if self._busy:
            raise EngineStateError("cannot clear the context while a generation runs on it")
        self._clear()

    def _prefill(self, ids: list[int]) -> None:
        """Decode the prompt, reusing the context's cached prefix when it was computed with the same adapters
        (:mod:`.prompt_cache` says when and why)."""
        keep = self._prompt_cache.reusable(ids, self.loras.key())
        # the cells after the cached prompt hold generated tokens: drop them too
        if not (keep and self._ll.llama_memory_seq_rm(self._memory, 0, keep, -1)):
            self._clear()
            keep = 0
        self._prompt_cache.start(keep, self.loras.key())
        self.reused_tokens = keep
        try:
            self._feed(ids[keep:])
        except BaseException:
            self._clear()
            raise
        self._prompt_cache.extend(ids[keep:])

    def _decode(self, batch) -> None:
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc == 1:
            raise ContextOverflowError(
                f"the context of {self.n_ctx} tokens is full: shorten the prompt, lower max_new_tokens or load "
                "the model with a larger n_ctx"
            )
        if rc != 0:
            raise GenerationError(f"llama_decode failed with code {rc}{llama_said()}")

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
            self.vocab.check_token(t)
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
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            self._decode_batch(chunk, range(start, start + len(chunk)), [0] * len(chunk), [True] * len(chunk))
            for i in range(len(chunk)):
                row = ll.llama_get_logits_ith(self._ctx, i)
                out[start + i] = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        return out

    def logits_at(self, index: int):
        """A float32 numpy copy (``(n_vocab,)``) of the raw logits of the last decode's ``index``-th token."""
        import numpy as np

        self._check_open()
        return np.ctypeslib.as_array(self._ll.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,)).copy()

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
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Sequence[tuple[int, float]] = (),
        stop_ids: Iterable[int] | None = None,
        cancel: Callable[[], bool] | None = None,
        matcher: Any = None,
    ) -> Iterator[int]:
        """New token ids after ``prompt_ids``, one at a time.

        Stops after ``max_new_tokens``, at the context's end, at a token in
        ``stop_ids`` (default: the model's end-of-generation tokens; the stop
        token is not yielded), or when ``cancel()`` turns true (checked before
        each token). The generator's return value says why: ``"stop"``,
        ``"length"`` or ``"cancelled"``. Arguments are checked now; the work
        starts at the first ``next()``. ``matcher``: a row's
        :class:`~adaptrix.generation.matcher.RowMatcher`, whose grammar masks each draw.
        """
        self._check_open()
        ids = self._check_prompt(prompt_ids)
        if max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens={max_new_tokens} must be 0 or more")
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                        logit_bias=tuple(logit_bias))
        check_sampling(**sampling)
        stops = frozenset(self.special.eog if stop_ids is None else (int(t) for t in stop_ids))
        return self._generate(ids, max_new_tokens, dict(sampling, seed=seed), stops, cancel, matcher)

    def _generate(self, ids: list[int], max_new_tokens: int, sampling: dict, stops: frozenset[int], cancel,
                  matcher=None):
        if self._busy:
            raise EngineStateError(
                "a generation is already running on this llama.cpp context: finish or close it first"
            )
        self._check_open()
        ll = self._ll
        self._busy = True
        chain = None
        try:
            chain = self.sampler(ids, **sampling)
            if cancel is not None and cancel():
                return FINISH_CANCELLED
            self._prefill(ids)
            room = self.n_ctx - len(ids)
            one = (ll.llama_token * 1)()
            step = ll.llama_batch_get_one(one, 1)
            for produced in range(max_new_tokens):
                token = chain.sample(-1, matcher)
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
                chain.close()
            self._busy = False

    # ------------------------------------------------------ parallel sequences

    def sampler(self, prompt_ids: Sequence[int], *, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                repetition_penalty: float = 1.0, seed: int | None = None, presence_penalty: float = 0.0,
                frequency_penalty: float = 0.0, logit_bias: Sequence[tuple[int, float]] = ()) -> SamplerChain:
        """A sampler chain for one sequence, as :meth:`generate_tokens` builds it (the prompt counts for the
        repetition penalty); :meth:`SamplerChain.sample` draws from a decoded position's logits."""
        self._check_open()
        for token, _ in logit_bias:
            if not 0 <= token < self.n_vocab:
                raise GenerationError(f"logit_bias names token id {token}, outside the model's vocabulary of "
                                      f"{self.n_vocab} tokens (0..{self.n_vocab - 1})", param="logit_bias")
        chain = new_chain(self._ll, list(prompt_ids), n_vocab=self.n_vocab, n_ctx=self.n_ctx, temperature=temperature,
                          top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
                          presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                          logit_bias=tuple(logit_bias))
        return SamplerChain(self._ll, chain, self._live_context, self.n_vocab)

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
        self._decode_batch(tokens, positions, seq_ids, logits)

    def _decode_batch(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
                      logits: Sequence[bool]) -> None:
        """One ``llama_decode`` of up to ``n_batch`` tokens, each at its position in its sequence."""
        batch = self._res.get("batch")
        if batch is None:
            batch = self._res["batch"] = self._ll.llama_batch_init(self.n_batch, 0, 1)
        batch.n_tokens = len(tokens)
        for i in range(len(tokens)):
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

    # ---------------------------------------------------- LoRA (self.loras')

    def load_lora(self, path: str | os.PathLike) -> LoraAdapter:
        """Load a GGUF LoRA file onto this model (not yet active: see :meth:`set_loras`)."""
        self._check_open()
        return self.loras.load(path)

    def set_loras(self, scales: Mapping[LoraAdapter, float] | Sequence[tuple[LoraAdapter, float]]) -> None:
        """Make exactly these adapters active, each with its scale (empty: the base model)."""
        self._check_open()
        pairs = self.loras.pairs(scales)
        if pairs == self.loras.active:
            return  # already set: no call, so nothing for llama.cpp to rebuild
        if self._busy:
            raise EngineStateError("cannot change adapters while a generation runs on this context")
        self.loras.apply(self._ctx, pairs)

    @property
    def active_loras(self) -> Scales:
        return self.loras.active

    @property
    def loaded_loras(self) -> tuple[LoraAdapter, ...]:
        return self.loras.loaded

    def unload_lora(self, adapter: LoraAdapter) -> None:
        """Deactivate (when active) and free one adapter."""
        self._check_open()
        self.loras.check_loaded(adapter)
        if any(a is adapter for a, _ in self.loras.active):
            self.set_loras([(a, s) for a, s in self.loras.active if a is not adapter])
        self._prompt_cache.forget_adapter(id(adapter))
        self.loras.free(adapter)


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
