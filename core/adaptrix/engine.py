"""The engine: load any causal LM through its family plugin, generate, converse, stream.

::

    from adaptrix import Engine
    engine = Engine()                     # the embedded SmolLM2-135M-Instruct
    engine.initialize()
    print(engine.generate("What is machine learning?"))
    for piece in engine.stream("Tell me a story", max_new_tokens=64):
        print(piece, end="", flush=True)

The engine names no family: detection, loading, tokenizer fixes and sampling
defaults all come from plugins. Adapter methods (``load_adapter``,
``switch_adapter``, ...) come from :class:`adaptrix.adapters.engine_api.AdapterAPI`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Any, Iterator, Sequence

import attrs

from . import generation as gen
from .adapters.engine_api import AdapterAPI
from .adapters.manager import check_residency_limits
from .conversation import ConversationStore, Conversation, Prompt, build_prompt
from .errors import EngineStateError, GenerationError, ModelConfigError, ModelLoadError
from .lease import ModelLease
from .types import UNSET, GenerationConfig, LoadOptions


class Engine(AdapterAPI):
    """One model (and its adapters) ready to generate text.

    ``model_id``: a Hub id, a local folder saved with ``save_pretrained``, or a
    ``.gguf`` file (converted once into a cached safetensors folder, see
    :mod:`adaptrix.gguf_cache`); ``None`` is the embedded default model.
    ``family`` overrides detection; other keyword arguments are family options
    passed to the plugin (e.g. ``enable_thinking=True`` for Qwen3).
    """

    def __init__(
        self,
        model_id: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        adapters_dir: str | os.PathLike = "adapters",
        trust_remote_code: bool = False,
        revision: str | None = None,
        family: str | None = None,
        *,
        progress: bool = True,
        max_loaded_adapters: int | None = None,
        max_adapter_bytes: int | None = None,
        merge_adapters: bool = False,
        **family_options: Any,
    ):
        if family_options:
            from . import family_options as fo
            from .plugins import get_host

            fo.check_known(family_options, get_host(), _ENGINE_ARGUMENTS)
        from .modelconfig import check_model_id

        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        self.model_id = None if model_id is None else check_model_id(model_id)
        self.device = device
        self.dtype = dtype
        self.adapters_dir = adapters_dir
        self.trust_remote_code = bool(trust_remote_code)
        self.revision = revision
        self.family_override = family
        self.family_options = dict(family_options)
        #: Adapter residency (LRU) and merge mode; see ``configure_adapters``.
        self.max_loaded_adapters = max_loaded_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.merge_adapters = bool(merge_adapters)
        self.progress = progress
        #: When True, ``generate``/``stream`` remember the conversation unless told ``use_context=False``.
        self.use_context_by_default = False
        self.family: str | None = None
        self.plugin: str | None = None
        self.conversations = ConversationStore()
        #: Exclusive use of the model: held by a thread for a call, by a stream's token while it generates.
        self._lock = ModelLease()
        self._loaded = None
        self._state: dict[str, Any] = {}

    # -- life cycle ------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return self._loaded is not None

    @property
    def tokenizer(self):
        return self._require_loaded().tokenizer

    @property
    def model(self):
        """The base model (``transformers`` module); adapters wrap it at generation time."""
        return self._require_loaded().model

    def initialize(self) -> bool:
        """Resolve the source, detect the family and load model + tokenizer through its plugin.

        Returns ``True`` (errors raise). Calling it again on an initialized engine
        does nothing. A failure leaves the engine uninitialized (and
        ``initialize`` may be called again).
        """
        with self._lock:
            if self._loaded is None:
                self._load()
        return True

    def _load(self) -> None:
        import time

        from . import modelconfig
        from .devices import resolve_device, resolve_dtype
        from .plugins import get_host
        from .source import resolve_source

        start = time.perf_counter()
        device = resolve_device(self.device)  # fail fast, before any file is read
        dtype = resolve_dtype(self.dtype, device)
        host = get_host()
        src = resolve_source(self.model_id, revision=self.revision, family=self.family_override, host=host)
        family = src.family
        if self.family_options:
            from . import family_options as fo

            fo.check_family(self.family_options, host, family)
        src = src.ensure_folder(progress=self.progress)  # the transformers backend loads a folder
        model_id, source, config = src.model_id, src.path, src.config
        options = LoadOptions(
            device=str(device),
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            revision=src.load_revision,
            family_options=dict(self.family_options),
            config=config,
            config_source=src.config_source,
        )
        try:
            loaded, plugin = host.call_family("load_model", family, model_id=source, options=options)
        except ModelLoadError as exc:
            if src.cache is None:
                raise
            raise ModelLoadError(
                f"{exc} (loaded from the cached conversion {src.cache.folder} of {src.gguf_file}; if it is "
                "damaged, delete that folder and adaptrix converts the file again)"
            ) from exc
        if loaded is None:
            raise ModelLoadError(f"no plugin loaded {model_id!r} for family {family!r} (load_model returned None)")
        family_gen, _ = host.call_family("default_generation_config", family, config=config)
        family_gen = (family_gen or GenerationConfig()).merged_over(
            GenerationConfig(context_length=modelconfig.context_length(config))
        )
        tok = loaded.tokenizer
        ctx = family_gen.context_length
        if ctx is None:
            limit = getattr(tok, "model_max_length", None)
            ctx = limit if isinstance(limit, int) and 0 < limit < 10**7 else None
        model = loaded.model
        self._state = {
            "model_id": model_id,
            "source": source,
            "config_source": src.config_source,
            "gguf": src.cache,
            "model_source": src,
            "config": config,
            "family_defaults": family_gen,
            "context_length": ctx,
            "eos_ids": _eos_ids(model, tok, loaded.end_of_turn_tokens),
            "pad_id": tok.pad_token_id if tok.pad_token_id is not None else _first(_eos_ids(model, tok, ())),
            "device": device,
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "load_seconds": time.perf_counter() - start,
        }
        self._loaded = loaded
        self.family = family
        self.plugin = plugin
        self._on_model_loaded(loaded)

    def cleanup(self) -> None:
        """Release the model, its adapters and every conversation; ``initialize()`` loads again."""
        with self._lock:
            if self._loaded is None:
                return
            try:
                self._on_cleanup()
            finally:
                device = self._state.get("device")
                self._loaded = None
                self._state = {}
                self.conversations.reset()
                gc.collect()
                if device is not None and device.type == "cuda":
                    import torch

                    torch.cuda.empty_cache()

    def __enter__(self) -> "Engine":
        self.initialize()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _require_loaded(self):
        if self._loaded is None:
            raise EngineStateError(
                "the engine has no model loaded: call engine.initialize() first (again after cleanup())"
            )
        return self._loaded

    # -- settings ----------------------------------------------------------------
    def resolve_settings(self, task_type: str | None = None, adapter=UNSET, **settings) -> GenerationConfig:
        """The settings a call with these arguments would use (explicit > task > family > global)."""
        self._require_loaded()
        explicit = gen.explicit_settings(**settings)
        task = task_type if task_type is not None else self._adapter_task_type(adapter)
        return self._resolve(explicit, task)

    def _resolve(self, explicit: GenerationConfig, task: str | None) -> GenerationConfig:
        cfg = gen.resolve_settings(explicit, task, self._state["family_defaults"])
        ctx = self._state["context_length"]
        cfg = attrs.evolve(cfg, context_length=ctx)
        if ctx is not None:
            if explicit.max_new_tokens is not None and explicit.max_new_tokens >= ctx:
                raise GenerationError(
                    f"max_new_tokens={explicit.max_new_tokens} does not fit in the context of "
                    f"{self._state['model_id']} ({ctx} tokens); ask for fewer new tokens"
                )
            if explicit.max_new_tokens is None and cfg.max_new_tokens >= ctx // 2:
                # a default larger than half the window would leave almost no room for the prompt
                cfg = attrs.evolve(cfg, max_new_tokens=max(1, ctx // 2))
        return cfg

    def _template_kwargs(self, chat_template_kwargs, enable_thinking) -> dict:
        kwargs = dict(self._loaded.chat_template_kwargs)
        kwargs.update(chat_template_kwargs or {})
        if enable_thinking is not None:
            kwargs["enable_thinking"] = bool(enable_thinking)
        return kwargs

    # -- prompt formatting ---------------------------------------------------------
    def _conversation_for(self, use_context, conversation) -> Conversation | None:
        if conversation is not None:
            if not isinstance(conversation, str) or not conversation:
                raise GenerationError(f"conversation must be a non-empty name, got {conversation!r}")
            return self.conversations.get(conversation)
        if use_context is None:
            use_context = self.use_context_by_default
        return self.conversations.get() if use_context else None

    def _format(self, prompt, cfg, conv, system, template_kwargs, raw) -> Prompt:
        loaded = self._loaded
        ctx = self._state["context_length"]
        budget = None if ctx is None else ctx - cfg.max_new_tokens
        name = self._state["model_id"]
        if raw:
            ids = list(loaded.tokenizer(prompt)["input_ids"])
            if budget is not None and len(ids) > budget:
                from .errors import ContextOverflowError

                raise ContextOverflowError(
                    f"the prompt is {len(ids)} tokens; the context of {name} is {ctx} tokens and "
                    f"max_new_tokens={cfg.max_new_tokens} leaves room for {budget}: shorten the prompt or "
                    "lower max_new_tokens"
                )
            return Prompt(prompt, tuple(ids), ({"role": "user", "content": prompt},), 0, False)
        if conv is not None and system is None:
            system = conv.system
        return build_prompt(
            loaded.tokenizer,
            prompt,
            history=conv.turns() if conv is not None else [],
            system=system,
            template_kwargs=template_kwargs,
            budget=budget,
            model_name=name,
            max_new_tokens=cfg.max_new_tokens,
            context_length=ctx,
        )

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt: str, **kwargs) -> str:
        """Generate a reply to ``prompt`` and return its text.

        Keyword arguments: sampling settings (``max_new_tokens`` or its seed
        name ``max_length``, ``temperature``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``stop``, ``seed``), ``task_type``,
        ``adapter`` (a name, ``None`` for the base model), ``system``,
        ``use_context``, ``conversation`` (a name), ``show_thinking``,
        ``enable_thinking``, ``chat_template_kwargs``, ``raw`` (no chat template).
        """
        return self.generate_detailed(prompt, **kwargs).text

    def generate_detailed(
        self,
        prompt: str,
        *,
        task_type: str | None = None,
        adapter=UNSET,
        system: str | None = None,
        use_context: bool | None = None,
        conversation: str | None = None,
        show_thinking: bool = False,
        enable_thinking: bool | None = None,
        chat_template_kwargs: dict | None = None,
        raw: bool = False,
        **settings,
    ) -> gen.GenerationResult:
        """Like :meth:`generate`, returning a :class:`~adaptrix.generation.GenerationResult`."""
        self._require_loaded()
        _check_prompt(prompt)
        _check_text(system, "system")
        explicit = gen.explicit_settings(**_settings_only(settings))
        with self._lock:
            self._require_loaded()
            with self._adapter_scope(adapter):
                task = task_type if task_type is not None else self._adapter_task_type(adapter)
                cfg = self._resolve(explicit, task)
                conv = None if raw else self._conversation_for(use_context, conversation)
                formatted = self._format(
                    prompt, cfg, conv, system, self._template_kwargs(chat_template_kwargs, enable_thinking), raw
                )
                result = self._run_one(formatted, cfg, show_thinking)
                if conv is not None:
                    if system is not None:
                        conv.system = system
                    conv.add_turn(prompt, result.text)
                return result

    def _spans(self, show_thinking: bool):
        return () if show_thinking else tuple(self._loaded.hidden_spans)

    def _generate_kwargs(self, cfg: GenerationConfig) -> dict:
        kw = gen.transformers_kwargs(cfg)
        kw["eos_token_id"] = list(self._state["eos_ids"]) or None
        kw["pad_token_id"] = self._state["pad_id"]
        return kw

    @contextlib.contextmanager
    def _seeded(self, cfg: GenerationConfig):
        if cfg.seed is None or gen.is_greedy(cfg):
            yield
            return
        import torch

        device = self._state["device"]
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            yield

    def _model_generate(
        self, input_ids, attention_mask, cfg, stops, prompt_len, spans, inside=None, extra=None, cancel=None,
        streamer=None,
    ):
        import torch

        kw = self._generate_kwargs(cfg)
        if stops or cancel is not None:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList(
                [gen.stopping_criteria(self._loaded.tokenizer, prompt_len, spans, stops, cancel, inside)]
            )
        if streamer is not None:
            kw["streamer"] = streamer
        kw.update(extra or {})
        model = self._generation_model()
        with torch.inference_mode(), self._seeded(cfg):
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)

    def _run_one(self, formatted: Prompt, cfg: GenerationConfig, show_thinking: bool) -> gen.GenerationResult:
        import torch

        device = self._state["device"]
        ids = torch.tensor([formatted.input_ids], dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        stops = tuple(cfg.stop or ()) + formatted.stops
        spans = self._spans(show_thinking)
        inside = gen.open_span(formatted.text, spans)
        out = self._model_generate(ids, mask, cfg, stops, ids.shape[1], spans, inside)
        new = out[0, ids.shape[1] :].tolist()
        return self._result(new, formatted, cfg, stops, spans)

    def _result(self, new: list[int], formatted: Prompt, cfg, stops, spans) -> gen.GenerationResult:
        raw_text = self._loaded.tokenizer.decode(new, skip_special_tokens=True)
        pipeline = gen.TextPipeline(spans, stops, gen.open_span(formatted.text, spans))
        text = pipeline.run(raw_text)
        if pipeline.stopped:
            reason = "stop"
        elif new and new[-1] in self._state["eos_ids"]:
            reason = "eos"
        else:
            reason = "length"
        return gen.GenerationResult(
            text=text,
            token_ids=tuple(new),
            prompt_tokens=len(formatted.input_ids),
            finish_reason=reason,
            settings=cfg,
            trimmed_turns=formatted.trimmed_turns,
            raw_text=raw_text,
        )

    # -- streaming ------------------------------------------------------------------
    def stream(
        self,
        prompt: str,
        *,
        task_type: str | None = None,
        adapter=UNSET,
        system: str | None = None,
        use_context: bool | None = None,
        conversation: str | None = None,
        show_thinking: bool = False,
        enable_thinking: bool | None = None,
        chat_template_kwargs: dict | None = None,
        raw: bool = False,
        **settings,
    ) -> Iterator[str]:
        """Yield the reply's text in pieces as the model produces them.

        Same arguments and same text as :meth:`generate` (hidden spans and stop
        strings are handled on the fly). The iterator may be advanced from any
        thread, one at a time (a thread pool's ``iterate_in_threadpool``). From
        the first ``next()`` until the generation ends, the model and the
        stream's adapters belong to the stream: other calls, from any thread,
        wait for it. Closing or dropping the iterator stops the generation.
        """
        self._require_loaded()
        _check_prompt(prompt)
        _check_text(system, "system")
        explicit = gen.explicit_settings(**_settings_only(settings))
        return self._stream(
            prompt, explicit, task_type, adapter, system, use_context, conversation, show_thinking,
            enable_thinking, chat_template_kwargs, raw,
        )

    def _stream(self, prompt, explicit, task_type, adapter, system, use_context, conversation, show_thinking,
                enable_thinking, chat_template_kwargs, raw):
        """The stream's generator. The model is leased to this stream (a token, not a thread) from the
        first ``next()`` until its generation ends: ``next()`` may come from any thread, and a call
        made meanwhile (from any thread, this one included) waits for the generation, never changes it.
        The generation runs to its end in a worker thread unless the stream is closed or dropped."""
        import torch

        owner = _StreamOwner()
        lease = self._lock
        streamer = gen.QueueStreamer()
        cancel = threading.Event()
        failure: list[BaseException] = []
        lease.acquire(owner)
        try:
            with lease.acting_as(owner), contextlib.ExitStack() as held:
                self._require_loaded()
                held.enter_context(self._adapter_scope(adapter))
                task = task_type if task_type is not None else self._adapter_task_type(adapter)
                cfg = self._resolve(explicit, task)
                conv = None if raw else self._conversation_for(use_context, conversation)
                formatted = self._format(
                    prompt, cfg, conv, system, self._template_kwargs(chat_template_kwargs, enable_thinking), raw
                )
                device = self._state["device"]
                ids = torch.tensor([formatted.input_ids], dtype=torch.long, device=device)
                stops = tuple(cfg.stop or ()) + formatted.stops
                spans = self._spans(show_thinking)
                inside = gen.open_span(formatted.text, spans)
                decoder = gen.IncrementalDecoder(self._loaded.tokenizer)
                scope = held.pop_all()  # from here on the worker restores the adapters and frees the lease

            def work():
                with lease.acting_as(owner):
                    try:
                        self._model_generate(
                            ids, torch.ones_like(ids), cfg, stops, ids.shape[1], spans, inside, cancel=cancel,
                            streamer=streamer,
                        )
                    except BaseException as exc:  # re-raised in the consuming thread
                        failure.append(exc)
                    finally:
                        try:
                            scope.close()
                        finally:
                            lease.release(owner)
                            streamer.end()

            worker = threading.Thread(target=work, name="adaptrix-stream", daemon=True)
            worker.start()
        except BaseException:
            lease.release(owner)
            raise
        pipeline = gen.TextPipeline(spans, stops, inside)
        pieces: list[str] = []
        try:
            while True:
                item = streamer.queue.get()
                if item is streamer.END:
                    break
                piece = pipeline.feed(decoder.add(item))
                if piece:
                    pieces.append(piece)
                    yield piece
            if failure:
                raise failure[0]
            tail = pipeline.feed(decoder.finish()) + pipeline.flush()
            if tail:
                pieces.append(tail)
                yield tail
            if conv is not None:
                with lease:
                    if system is not None:
                        conv.system = system
                    conv.add_turn(prompt, "".join(pieces))
        finally:
            # Closed, dropped or done: stop the generation (no join: this may run in a finalizer);
            # the worker restores the adapters and frees the model within one token.
            cancel.set()

    # -- batches ----------------------------------------------------------------------
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        adapters: Sequence[str | None] | None = None,
        task_type: str | None = None,
        system: str | None = None,
        show_thinking: bool = False,
        enable_thinking: bool | None = None,
        chat_template_kwargs: dict | None = None,
        raw: bool = False,
        **settings,
    ) -> list[str]:
        """Generate for several prompts at once (left-padded); each gets what it would get alone.

        ``adapters`` optionally names an adapter per prompt (``None``: base model).
        Prompts are independent: no conversation history is used or recorded.
        """
        return [r.text for r in self.generate_batch_detailed(
            prompts, adapters=adapters, task_type=task_type, system=system, show_thinking=show_thinking,
            enable_thinking=enable_thinking, chat_template_kwargs=chat_template_kwargs, raw=raw, **settings,
        )]

    def generate_batch_detailed(
        self,
        prompts: Sequence[str],
        *,
        adapters: Sequence[str | None] | None = None,
        task_type: str | None = None,
        system: str | None = None,
        show_thinking: bool = False,
        enable_thinking: bool | None = None,
        chat_template_kwargs: dict | None = None,
        raw: bool = False,
        **settings,
    ) -> list[gen.GenerationResult]:
        import torch

        self._require_loaded()
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise GenerationError("generate_batch takes a list of prompts; use generate() for a single one")
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            _check_prompt(p, f"prompts[{i}]")
        _check_text(system, "system")
        if adapters is not None and len(adapters) != len(prompts):
            raise GenerationError(f"adapters has {len(adapters)} entries for {len(prompts)} prompts; give one per prompt")
        explicit = gen.explicit_settings(**_settings_only(settings))
        with self._lock:
            self._require_loaded()
            task = task_type if task_type is not None else self._adapter_task_type(UNSET)
            cfg = self._resolve(explicit, task)
            kwargs = self._template_kwargs(chat_template_kwargs, enable_thinking)
            formatted = [self._format(p, cfg, None, system, kwargs, raw) for p in prompts]
            width = max(len(f.input_ids) for f in formatted)
            pad = self._state["pad_id"] if self._state["pad_id"] is not None else 0
            rows = [[pad] * (width - len(f.input_ids)) + list(f.input_ids) for f in formatted]
            masks = [[0] * (width - len(f.input_ids)) + [1] * len(f.input_ids) for f in formatted]
            device = self._state["device"]
            ids = torch.tensor(rows, dtype=torch.long, device=device)
            mask = torch.tensor(masks, dtype=torch.long, device=device)
            stops = tuple(cfg.stop or ()) + formatted[0].stops
            spans = self._spans(show_thinking)
            extra = self._adapter_batch_kwargs(list(adapters) if adapters is not None else None, len(prompts))
            inside = gen.open_span(formatted[0].text, spans)  # one template: every row ends the same way
            try:
                out = self._model_generate(ids, mask, cfg, stops, width, spans, inside, extra=extra)
            finally:
                self._adapter_batch_done()
            eos = set(self._state["eos_ids"])
            results = []
            for row, f in zip(out[:, width:].tolist(), formatted):
                new = []
                for t in row:
                    new.append(t)
                    if t in eos:
                        break
                else:
                    while stops and new and new[-1] == pad and pad not in eos:
                        new.pop()  # padding after a row that stopped on a stop string
                results.append(self._result(new, f, cfg, stops, spans))
            return results

    # -- conversations -------------------------------------------------------------
    def reset_context(self, conversation: str | None = None) -> None:
        """Forget a named conversation, or every conversation when no name is given."""
        with self._lock:
            self.conversations.reset(conversation)

    def get_history(self, conversation: str | None = None) -> list[dict[str, str]]:
        """A copy of a conversation's messages (the default conversation when no name is given)."""
        conv = self.conversations.get(conversation)
        return [dict(m) for m in conv.messages]

    # -- information -----------------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        """Family, plugin, model, source, size, dtype, device, context, defaults, adapters."""
        loaded = self._require_loaded()
        s = self._state
        config = s["config"] or {}
        archs = config.get("architectures") or []
        from .generation_defaults import GLOBAL_DEFAULTS

        defaults = s["family_defaults"].merged_over(GLOBAL_DEFAULTS)
        info: dict[str, Any] = {
            "family": self.family,
            "plugin": self.plugin,
            "model_id": s["model_id"],
            "source": s["source"],
            "gguf_file": str(s["gguf"].gguf_path) if s["gguf"] else None,
            "model_type": config.get("model_type"),
            "architecture": archs[0] if archs else None,
            "parameters": s["parameters"],
            "dtype": str(s["dtype"]).replace("torch.", ""),
            "device": str(s["device"]),
            "context_length": s["context_length"],
            "generation_defaults": defaults.as_dict(),
            "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
            "chat_template_kwargs": dict(loaded.chat_template_kwargs),
            "hidden_spans": [list(p) for p in loaded.hidden_spans],
            "use_context_by_default": self.use_context_by_default,
            "conversations": self.conversations.names(),
            "load_seconds": round(s["load_seconds"], 3),
            "notes": list(loaded.notes),
        }
        info.update(self._adapters_info())
        return info

    # -- serving seam (adaptrix serve, adaptrix.batching) ----------------------------
    # Three public methods for step-level decoders that run the model themselves
    # (iteration-level batching): format a request exactly as generate() would,
    # give the module and forward kwargs for a batch of per-row adapters, and turn
    # generated ids into the result generate() would return. Transformers backend only.
    def prepare_request(
        self,
        prompt: str,
        *,
        history: Sequence[dict[str, str]] = (),
        system: str | None = None,
        task_type: str | None = None,
        adapter=UNSET,
        show_thinking: bool = False,
        enable_thinking: bool | None = None,
        chat_template_kwargs: dict | None = None,
        raw: bool = False,
        **settings,
    ) -> gen.PreparedRequest:
        """Resolve settings and format ``history + prompt`` as :meth:`generate_detailed` would; generate nothing.

        ``history``: earlier ``{"role", "content"}`` messages (user/assistant),
        trimmed oldest first to fit the context. Bad settings and prompts that do
        not fit raise the same errors as ``generate``.
        """
        self._require_loaded()
        _check_prompt(prompt)
        explicit = gen.explicit_settings(**_settings_only(settings))
        with self._lock:
            self._require_loaded()
            task = task_type if task_type is not None else self._adapter_task_type(adapter)
            cfg = self._resolve(explicit, task)
            conv = Conversation(name="request", messages=[dict(m) for m in history]) if history and not raw else None
            formatted = self._format(
                prompt, cfg, conv, system, self._template_kwargs(chat_template_kwargs, enable_thinking), raw
            )
            spans = self._spans(show_thinking)
            return gen.PreparedRequest(
                prompt=formatted,
                settings=cfg,
                stops=tuple(cfg.stop or ()) + formatted.stops,
                spans=spans,
                inside=gen.open_span(formatted.text, spans),
                eos_ids=tuple(self._state["eos_ids"]),
                pad_id=self._state["pad_id"],
            )

    def decoding_model(self, adapters: Sequence[str | None]):
        """``(module, forward_kwargs)``: calling ``module(..., **forward_kwargs)`` gives row i ``adapters[i]``.

        ``None`` rows use the base model; adapters are loaded when needed. The
        kwargs stay valid until the adapters change (load, unload, eviction).
        """
        self._require_loaded()
        with self._lock:
            extra = self._adapter_batch_kwargs(list(adapters), len(adapters)) if adapters else {}
            return self._generation_model(), extra

    def result_for(self, prepared: gen.PreparedRequest, new_ids: Sequence[int]) -> gen.GenerationResult:
        """The :class:`~adaptrix.generation.GenerationResult` ``generate`` returns for these generated ids."""
        self._require_loaded()
        return self._result(list(new_ids), prepared.prompt, prepared.settings, prepared.stops, prepared.spans)


#: The keyword arguments of ``Engine()`` itself (anything else must be a declared family option).
_ENGINE_ARGUMENTS = (
    "model_id", "device", "dtype", "adapters_dir", "trust_remote_code", "revision", "family", "progress",
    "max_loaded_adapters", "max_adapter_bytes", "merge_adapters",
)


#: The seed design's name for the engine.
ModularAdaptrixEngine = Engine


def _settings_only(settings: dict) -> dict:
    unknown = sorted(set(settings) - set(gen.SETTING_NAMES) - {"max_length"})
    if unknown:
        raise GenerationError(
            f"unknown generation argument(s) {', '.join(unknown)}; settings are "
            f"{', '.join(gen.SETTING_NAMES)} and max_length"
        )
    return settings


def _check_prompt(prompt, what: str = "prompt") -> None:
    if not isinstance(prompt, str):
        raise GenerationError(f"{what} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise GenerationError(f"{what} is empty; give the model some text to answer")
    _check_text(prompt, what)


def _check_text(text, what: str) -> None:
    """Text a tokenizer can take: valid Unicode (no lone surrogate such as a half-decoded emoji)."""
    if text is None:
        return
    if not isinstance(text, str):
        raise GenerationError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GenerationError(
            f"{what} holds {text[exc.start:exc.end]!r} at character {exc.start}, a lone UTF-16 surrogate that is "
            "not text (a badly decoded emoji?); decode the input as UTF-8 and try again"
        ) from None


class _StreamOwner:
    """The identity a stream holds the model lease under (hashable by identity)."""

    __slots__ = ("__weakref__",)


def _first(values):
    return values[0] if values else None


def _eos_ids(model, tokenizer, end_of_turn_tokens) -> list[int]:
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
