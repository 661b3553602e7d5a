"""The reference backend: transformers models with peft adapters.

Loading goes through the family plugin's ``load_model`` hook (the shared
loader when the plugin leaves it out), then its ``chat_behaviour`` hook for the
tokenizer's template (:mod:`adaptrix.plugins.family_chat`); a GGUF source is converted
once into a cached safetensors folder first. Generation runs ``model.generate`` on
left-padded batches; adapters go through
:class:`adaptrix.adapters.peft_manager.PeftAdapterManager` (switching, every
composition method, merging, mixed-adapter batches). Training runs on this
backend only.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Sequence

import attrs

from adaptrix.adapters.peft_manager import PeftAdapterManager
from adaptrix.backends.contract import Backend, Runner
from adaptrix.backends.transformers import batching, grammar_mask, scores
from adaptrix.backends.transformers.logit_rules import logit_rules
from adaptrix.errors import ModelLoadError
from adaptrix.generation.matcher import compiler_for, row_matchers
from adaptrix.generation.settings import is_greedy
from adaptrix.models.devices import choose_dtype, resolve_device
from adaptrix.plugins import family_chat
from adaptrix.types import GenerationConfig


class TransformersBackend(Backend):
    name = "transformers"
    summary = "transformers + peft (reference: every adapter operation, training)"
    priority = 0
    requires = ("torch", "transformers", "peft")
    install_hint = "pip install torch==2.13.0 transformers peft (or the torch build for your GPU)"

    def load(self, source, options, host) -> "TransformersRunner":
        device = resolve_device(options.device)  # a device that is not there fails before any conversion
        # The dtype is decided once, here, before any weight is read (or a GGUF converted): the plugin's
        # loader gets its name, and a model that fits in no dtype is refused now.
        dtype = choose_dtype(options.dtype, device, source)
        options = attrs.evolve(options, dtype=dtype.dtype)
        if options.threads:
            import torch

            torch.set_num_threads(options.threads)  # torch's thread pool is one per process
        source = source.ensure_folder(progress=options.progress)
        options = attrs.evolve(options, config=source.config, config_source=source.config_source,
                               revision=source.load_revision)
        try:
            loaded, _ = host.call_family("load_model", source.family, model_id=str(source.path), options=options)
        except ModelLoadError as exc:
            if source.cache is None:
                raise
            raise ModelLoadError(
                f"{exc} (loaded from the cached conversion {source.cache.folder} of {source.gguf_file}; if it is "
                "damaged, delete that folder and adaptrix converts the file again)"
            ) from exc
        if loaded is None:
            raise ModelLoadError(
                f"no plugin loaded {source.model_id!r} for family {source.family!r} (load_model returned None)"
            )
        chat = family_chat.ask(host, source.family, source.config, loaded.tokenizer, options.family_options)
        return TransformersRunner(source, attrs.evolve(loaded, chat=chat), options, dtype_reason=dtype.reason)


class TransformersRunner(Runner):
    backend = "transformers"
    capabilities = frozenset({"step_decode", "batch_invariant", "grammar"})

    def __init__(self, source, loaded, options, dtype_reason: str | None = None):
        self.source = source
        self.loaded = loaded
        self.device = resolve_device(options.device)
        # What the weights are in (a plugin's own loader may not follow options.dtype), and why.
        self.dtype = next((p.dtype for p in loaded.model.parameters() if p.is_floating_point()), None)
        self.dtype_reason = dtype_reason
        self.eos_ids = tuple(eos_ids(loaded.model, loaded.tokenizer, loaded.end_of_turn_tokens))
        tok = loaded.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (self.eos_ids[0] if self.eos_ids else None)
        self.parameters = sum(p.numel() for p in loaded.model.parameters())
        self.manager = None

    # -- adapters ---------------------------------------------------------------------
    def adapter_manager(self, adapters_dir, **options):
        self.manager = PeftAdapterManager(self.loaded, adapters_dir, **options)
        self.manager.base_file = self.source.gguf_file
        return self.manager

    def step_decoder(self, *, lease, max_rows: int = 8, batch_invariant: bool = False):
        """:class:`~adaptrix.backends.transformers.batching.TransformersStepDecoder` where the model's KV cache can
        be merged row by row (else ``None``), built from this runner's model, tokenizer and adapter manager
        (``batch_invariant``: each row computed alone, as ``generate`` computes it). Rows are not limited
        here: the caller admits at most ``max_rows``."""
        config = self.loaded.model.config
        if not batching.supported(config):
            return None
        return batching.TransformersStepDecoder(
            config=config, tokenizer=self.loaded.tokenizer, decoding_model=self.decoding_model,
            scope=self.manager.scope, lease=lease, batch_invariant=batch_invariant,
            grammar_matcher=self.grammar_matcher,
        )

    def token_vocabulary(self):
        """The grammar engine's view of this model's vocabulary (:mod:`.grammar_mask`)."""
        return grammar_mask.token_vocabulary(self.loaded.model, self.loaded.tokenizer, self.eos_ids)

    def grammar_matcher(self, grammar):
        """A fresh row matcher of ``grammar`` (``None``: a free row), compiled once per grammar for this model."""
        return None if grammar is None else compiler_for(self).matcher(grammar)

    def decoding_model(self, adapters: Sequence[str | None]):
        """``(module, forward_kwargs)``: calling ``module(..., **forward_kwargs)`` gives row i ``adapters[i]``.

        ``None`` rows use the base model; adapters are loaded when needed. The pair stays valid while these
        adapters stay loaded, whatever other adapters are loaded or unloaded meanwhile (a server changes
        adapters between two decode steps of rows that use others).
        """
        extra = self.manager.batch_kwargs(list(adapters), len(adapters)) if adapters else {}
        return self.manager.generation_model(), extra

    # -- generation ---------------------------------------------------------------------
    def generate(self, rows, cfg, *, adapters=None, stop=None, on_tokens=None, cancel=None,
                 grammars=None) -> list[list[int]]:
        import torch

        matchers = row_matchers(self, grammars)
        width = max(len(r) for r in rows)
        pad = self.pad_id if self.pad_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long,
                            device=self.device)
        kw = transformers_kwargs(cfg)
        kw["eos_token_id"] = list(self.eos_ids) or None
        kw["pad_token_id"] = pad
        if stop is not None or cancel is not None:
            kw["stopping_criteria"] = _criteria(width, stop, cancel)
        if on_tokens is not None:
            kw["streamer"] = _Streamer(on_tokens)
        # merged by generate after its repetition penalty, before its warpers: OpenAI's penalties and bias, then
        # the grammar's mask (last, so no bias lifts a masked token)
        processors = [logit_rules(cfg, width)]
        if matchers is not None:
            processors.append(grammar_mask.GrammarLogitsProcessor(matchers, width))
        if any(p is not None for p in processors):
            from transformers import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList([p for p in processors if p is not None])
        if adapters is not None:
            kw.update(self.manager.batch_kwargs(list(adapters), len(rows)))
        model = self.manager.generation_model() if self.manager is not None else self.loaded.model
        with torch.inference_mode(), self._seeded(cfg):
            out = model.generate(input_ids=ids, attention_mask=mask, **kw)
        eos = set(self.eos_ids)
        results = []
        for row in out[:, width:].tolist():
            new = []
            for t in row:
                new.append(t)
                if t in eos:
                    break
            else:
                while stop is not None and new and new[-1] == pad and pad not in eos:
                    new.pop()  # padding after a row that stopped on a stop string before the others
            results.append(new)
        return results

    def token_logprobs(self, rows, starts, *, adapters=None, top=0):
        """One forward pass over the left-padded rows, mixed adapters through peft (:mod:`.scores`)."""
        return scores.token_logprobs(self, rows, starts, adapters=adapters, top=top)

    @contextlib.contextmanager
    def _seeded(self, cfg):
        pass

        if cfg.seed is None or is_greedy(cfg):
            yield
            return
        import torch

        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            yield

    def info(self) -> dict[str, Any]:
        return {
            "dtype": str(self.dtype).replace("torch.", ""),
            "dtype_reason": self.dtype_reason,
            "device": str(self.device),
            "parameters": self.parameters,
        }

    def close(self) -> None:
        device = self.device
        self.loaded = None
        self.manager = None
        import gc

        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _criteria(prompt_len: int, stop: Callable[[int, Sequence[int]], bool] | None, cancel: threading.Event | None):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if cancel is not None and cancel.is_set():
                return done | True
            if stop is not None:
                for row in range(input_ids.shape[0]):
                    if stop(row, input_ids[row, prompt_len:].tolist()):
                        done[row] = True
            return done

    return StoppingCriteriaList([_Stop()])


class _Streamer:
    """A transformers streamer handing each step's new ids to a callback (the prompt is skipped)."""
    def __init__(self, on_tokens: Callable[[list[int]], None]):
        self.on_tokens = on_tokens
        self._skipped_prompt = False

    def put(self, value):
        if not self._skipped_prompt:
            self._skipped_prompt = True  # generate() first puts the prompt ids
            return
        self.on_tokens(value.reshape(-1).tolist())

    def end(self):
        pass


def eos_ids(model, tokenizer, end_of_turn_tokens) -> list[int]:
    """EOS ids of the model's generation config (else the tokenizer's), then the family's end-of-turn tokens."""
    ids: list[int] = []
    gc_ = getattr(model, "generation_config", None)
    eos = getattr(gc_, "eos_token_id", None) if gc_ is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if value is not None and value not in ids:
            ids.append(int(value))
    for token in end_of_turn_tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is not None and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(int(tid))
    return ids


def transformers_kwargs(cfg: GenerationConfig) -> dict[str, Any]:
    """Keyword arguments for ``model.generate`` from a resolved config.

    Greedy (temperature 0): ``do_sample=False`` and no sampling parameters, but
    sampling values left in the model's own generation_config are reset to
    their neutral values so transformers does not warn about them.
    """
    kw: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens}
    if is_greedy(cfg):
        kw.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50)
    else:
        kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p if cfg.top_p is not None else 1.0)
        kw["top_k"] = cfg.top_k if cfg.top_k is not None else 0
    rp = cfg.repetition_penalty
    kw["repetition_penalty"] = rp if rp is not None else 1.0
    return kw
