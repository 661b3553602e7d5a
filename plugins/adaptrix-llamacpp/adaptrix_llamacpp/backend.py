"""The llama.cpp backend: GGUF models at CPU speed, with the same PEFT adapters.

``Engine(backend="llamacpp")`` (or ``auto`` with a GGUF source) runs the model
through :class:`~.runtime.LlamaRuntime`. Adapters keep the core's names,
validation and residency (:class:`adaptrix.adapters.manager.AdapterManager`);
applying one converts its PEFT folder once into a GGUF LoRA (cached by content,
see :mod:`.lora_cache`) and sets it on the context with a scale, so a switch
costs no reload. Several active adapters are summed, each with scale 1; a
``cat`` composition is the weighted sum of its sources' deltas, which llama.cpp
expresses exactly as per-adapter scales. Rows of a mixed batch run one after
another, each with its own adapters; the server's step decoder (:mod:`.steps`)
runs its rows as parallel sequences instead.

What llama.cpp cannot do here, and says so: merging, composition methods
other than ``cat``, training (use the transformers backend, then convert).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import contextlib
from typing import Any

from adaptrix.adapters.compositions import composed_info
from adaptrix.adapters.info import AdapterInfo
from adaptrix.adapters.manager import AdapterManager
from adaptrix.backends.contract import Backend, Runner
from adaptrix.errors import AdapterError, BackendError
from adaptrix.generation.matcher import compiler_for
from adaptrix.plugins import family_chat
from adaptrix.storage.files import remove_stale
from adaptrix.types import LoadedModel
from adaptrix_llamacpp.scores import token_logprobs

from .codec import LlamaTextCodec
from .gguf_index import module_index, read_gguf_model
from .grammar import token_vocabulary
from .lora_cache import cached_lora, lora_root
from .runtime import LlamaRuntime
from .sampling import sampling
from .steps import LlamaStepDecoder


class LlamaCppBackend(Backend):
    name = "llamacpp"
    summary = "llama.cpp: GGUF files at CPU speed, the same LoRA adapters"
    priority = 10
    requires = ("llama_cpp",)
    install_hint = ("pip install adaptrix-llamacpp (llama-cpp-python builds from source where no wheel exists: "
                    "about 5 minutes, needs cmake and a C++ compiler)")

    def prefers(self, source) -> bool:
        return source.gguf_file is not None

    def refuses(self, source) -> str | None:
        if source.gguf_file is None:
            return (
                f"{source.model_id} is not a GGUF model and llama.cpp runs GGUF files only; pass a .gguf file or a "
                "GGUF repo on the Hub (owner/repo-GGUF:Q4_K_M), or use backend='transformers' for this model"
            )
        return None

    def load(self, source, options, host) -> "LlamaCppRunner":
        device = (options.device or "auto").strip().lower()
        if device not in ("cpu", "auto"):
            raise BackendError(
                f"device {options.device!r}: this llama.cpp backend runs on the CPU; use device='cpu', or "
                "backend='transformers' for a GPU"
            )
        if (options.dtype or "auto").strip().lower() != "auto":
            raise BackendError(
                f"dtype {options.dtype!r}: llama.cpp computes in the GGUF file's own tensor types; leave dtype='auto' "
                "or use backend='transformers' to pick a dtype"
            )
        runtime = LlamaRuntime(source.gguf_file, n_threads=options.threads)
        try:
            codec = LlamaTextCodec(runtime, name=source.model_id)
            loaded = LoadedModel(
                model=runtime,
                tokenizer=codec,
                family=source.family,
                model_id=source.model_id,
                config=dict(source.config),
                notes=(f"llama.cpp, {runtime.n_ctx}-token context, {runtime.n_threads} threads",),
                # thinking, hidden spans, template variables: the family's answer for the GGUF's template
                chat=family_chat.ask(host, source.family, source.config, codec, options.family_options),
            )
            return LlamaCppRunner(source, loaded, runtime, progress=options.progress)
        except BaseException:
            runtime.close()
            raise


class LlamaCppRunner(Runner):
    backend = "llamacpp"
    capabilities = frozenset({"step_decode", "batch_invariant", "grammar"})

    def __init__(self, source, loaded, runtime, *, progress: bool = True):
        self.source = source
        self.loaded = loaded
        self.runtime = runtime
        self.progress = progress
        special = runtime.special
        turn_ends = {loaded.tokenizer.convert_tokens_to_ids(t) for t in loaded.end_of_turn_tokens}  # in the vocab
        self.eos_ids = tuple(sorted(set(special.eog) | turn_ends))
        self.pad_id = special.pad if special.pad is not None else special.eos
        self.context_length = runtime.n_ctx
        self.manager: LlamaCppAdapterManager | None = None

    def adapter_manager(self, adapters_dir, **options) -> "LlamaCppAdapterManager":
        self.manager = LlamaCppAdapterManager(self.loaded, adapters_dir, runner=self, **options)
        return self.manager

    def generate(self, rows, cfg, *, adapters=None, stop=None, on_tokens=None, cancel=None,
                 grammars=None) -> list[list[int]]:
        if adapters is not None:
            adapters = self.manager.rows(adapters, len(rows))
        results = []
        for i, ids in enumerate(rows):
            scope = self.manager.scope(adapters[i]) if adapters is not None else contextlib.nullcontext()
            new: list[int] = []
            with scope:
                row_stop = None if stop is None else (lambda new_ids, i=i: stop(i, new_ids))
                tokens = self._row(ids, cfg, row_stop, cancel, None if grammars is None else grammars[i])
                try:
                    for token in tokens:
                        new.append(token)
                        if on_tokens is not None:
                            on_tokens([token])
                finally:
                    tokens.close()
            results.append(new)
        return results

    def token_logprobs(self, rows, starts, *, adapters=None, top=0):
        """Each row one pass over its whole sequence, rows grouped by adapter (:mod:`.scores`)."""
        return token_logprobs(self, rows, starts, adapters=adapters, top=top)

    def stream_tokens(self, ids, cfg, *, stop=None, grammar=None):
        """Generated in the pulling thread, one ``llama_decode`` per ``next()``: no thread in between."""
        return self._row(ids, cfg, None if stop is None else (lambda new_ids: stop(0, new_ids)), None, grammar)

    def token_vocabulary(self):
        """Each token's bytes as llama.cpp writes them (:mod:`.grammar`); the grammar engine's vocabulary."""
        return token_vocabulary(self.runtime, self.eos_ids)

    def grammar_matcher(self, grammar):
        """A fresh row matcher of ``grammar`` (``None``: a free row), compiled once per grammar for this model."""
        return None if grammar is None else compiler_for(self).matcher(grammar)

    def step_decoder(self, *, lease, max_rows: int = 8, batch_invariant: bool = False):
        """Rows as parallel sequences of the one context (:mod:`.steps`), holding ``lease`` (the engine's model
        lease); ``batch_invariant``: one ``llama_decode`` per row instead of per adapter."""
        return LlamaStepDecoder(self, lease=lease, max_rows=max_rows, batch_invariant=batch_invariant)

    def _row(self, ids, cfg, stop, cancel, grammar=None):
        """One prompt's new tokens; the end-of-generation token that ends a row is kept, as transformers keeps EOS.
        ``grammar``: each draw masked to what it allows (its end forces an end-of-generation token)."""
        if self.manager is not None:  # a step decoder leaves its last group's LoRAs set: use the engine's own
            self.manager.sync_context()
        tokens = self.runtime.generate_tokens(
            ids, max_new_tokens=cfg.max_new_tokens, **sampling(cfg), stop_ids=(),
            cancel=cancel.is_set if cancel is not None else None, matcher=self.grammar_matcher(grammar),
        )
        return self._until_end(tokens, frozenset(self.eos_ids), stop)

    @staticmethod
    def _until_end(tokens, eos, stop):
        new: list[int] = []
        try:
            for token in tokens:
                new.append(token)
                yield token
                if token in eos or (stop is not None and stop(new)):
                    return
        finally:
            tokens.close()

    def info(self) -> dict[str, Any]:
        info = self.runtime.info
        return {
            "dtype": f"gguf ({info.description})" if info.description else "gguf",
            "device": "cpu",
            "parameters": info.n_params,
            "threads": self.runtime.n_threads,
            "context_window": self.runtime.n_ctx,
        }

    def close(self) -> None:
        self.manager = None
        self.runtime.close()


class LlamaCppAdapterManager(AdapterManager):
    """PEFT adapters applied as GGUF LoRAs with per-adapter scales on the llama.cpp context."""
    backend = "llamacpp"
    COMPOSE_METHODS = ("cat",)
    CAN_MERGE = False

    def __init__(self, loaded, adapters_dir="adapters", *, runner: LlamaCppRunner, merge: bool = False, **options):
        if merge:
            raise BackendError(
                "the llamacpp backend applies adapters at run time and cannot merge them; drop merge_adapters=True "
                "or use backend='transformers'"
            )
        super().__init__(loaded, adapters_dir, **options)
        self.runner = runner
        self.base_file = runner.source.gguf_file
        remove_stale(lora_root())  # what conversions killed before this start left (one listing of the folder)
        self._handles: dict[str, Any] = {}  # adapter name -> runtime LoraAdapter
        self._composed: dict[str, dict[str, float]] = {}  # a cat composition: source -> weight

    def _module_index(self):
        from .convert import check_architecture  # numpy: not at discovery, which imports this module

        model = read_gguf_model(self.runner.source.gguf_file)
        check_architecture(model, f"adapters on {model.path.name}")
        return module_index(model)

    def _add(self, info: AdapterInfo, state) -> None:
        if state is not None:
            raise AdapterError(
                f"adapter {info.name!r}: {info.weights_file} is a pickle; the llamacpp backend converts "
                "adapter_model.safetensors only: save the adapter as safetensors first"
            )
        path = cached_lora(info.path, self.runner.source.gguf_file, progress=self.runner.progress, name=info.name)
        self._handles[info.name] = self.runner.runtime.load_lora(path)

    def _remove(self, name: str) -> None:
        parts = self._composed.pop(name, None)
        if parts is not None:
            self._pinned.release(parts)  # its sources may be evicted again
            return
        self.runner.runtime.unload_lora(self._handles.pop(name))

    def _apply(self, target: tuple[str, ...]) -> None:
        self.runner.runtime.set_loras(self.lora_scales(target))
        self._active = target

    def sync_context(self) -> None:
        """Set the active adapters' LoRAs on the context, if something (a step decoder) changed them."""
        self.runner.runtime.set_loras(self.lora_scales(self._active))  # nothing to do when unchanged

    def lora_scales(self, target: tuple[str, ...]) -> list[tuple[Any, float]]:
        """The runtime's ``(LoraAdapter, scale)`` pairs that make exactly ``target`` active (loaded names)."""
        scales: dict[str, float] = {}
        for name in target:
            for source, weight in self._composed.get(name, {name: 1.0}).items():
                if source not in self._handles:
                    raise AdapterError(
                        f"composition {name!r} needs adapter {source!r}, which is no longer loaded; load it again "
                        f"or compose {name!r} anew"
                    )
                scales[source] = scales.get(source, 0.0) + weight
        return [(self._handles[s], w) for s, w in scales.items()]

    def _compose(self, sources, weights, name, method, options) -> AdapterInfo:
        infos = [self._infos[s] for s in sources]
        info = composed_info(
            name, method, weights, infos, rank=sum(i.rank or 0 for i in infos), alpha=None,
            target_modules=tuple(sorted({t for i in infos for t in (i.target_modules or ())})),
            tensor_bytes=0,
        )
        self._composed[name] = dict(weights)
        self._pinned.hold(self._composed[name])  # one holder per source, whatever its weight, while it exists
        return info

    def _check_removable(self, name: str) -> None:
        users = sorted(c for c, parts in self._composed.items() if name in parts)
        if users:
            raise AdapterError(f"adapter {name!r} is part of composition(s) {users}; unload those first")

    def _close(self) -> None:
        self._handles.clear()
        self._composed.clear()
