"""The engine: any causal LM on any backend, with its adapters, one API.

::

    from adaptrix import Engine
    engine = Engine()                     # the embedded SmolLM2-135M-Instruct
    engine.initialize()
    print(engine.generate("What is machine learning?"))
    for piece in engine.stream("Tell me a story", max_new_tokens=64):
        print(piece, end="", flush=True)

The engine names no family and no backend but the reference one. It resolves
the source once (:mod:`adaptrix.models.source`), asks the plugins for the family's
defaults, picks a backend (:mod:`adaptrix.backends`) whose :class:`Runner`
executes the model, and keeps an adapter manager (the backend's subclass of
:class:`adaptrix.adapters.manager.AdapterManager`). What it adds on top: the
settings resolution order, prompt formatting and conversations, the text
pipeline (hidden spans, stop strings), streaming from any thread, and one
lease on the model so that calls never interleave.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import attrs

from adaptrix.adapters.manager import check_residency_limits
from adaptrix.generation.conversation import Conversation, ConversationStore, Prompt, build_prompt
from adaptrix.errors import BackendError, ContextOverflowError, EngineStateError, GenerationError
from adaptrix.generation.lease import LeasedTokens, ModelLease
from adaptrix.generation.request import GenerationRequest
from adaptrix.types import UNSET, GenerationConfig, LoadOptions
from adaptrix.generation.result import GenerationResult, PreparedRequest
from adaptrix.generation.settings import explicit_settings, resolve_settings
from adaptrix.generation.steps import StepDecoder, finish_row, result_of
from adaptrix.generation.text import IncrementalDecoder, open_span, stop_check

#: The keyword arguments of ``Engine()`` itself (anything else must be a declared family option).
_ENGINE_ARGUMENTS = (
    "model_id", "device", "dtype", "adapters_dir", "trust_remote_code", "revision", "family", "backend",
    "threads", "progress", "max_loaded_adapters", "max_adapter_bytes", "merge_adapters",
)


@attrs.frozen
class Session:
    """What ``initialize()`` loaded: the resolved source, the backend and its runner, the family's defaults."""

    source: Any  # adaptrix.models.source.ModelSource
    backend: Any  # adaptrix.backends.choice.Choice
    runner: Any  # adaptrix.backends.contract.Runner
    adapters: Any  # adaptrix.adapters.manager.AdapterManager
    family_defaults: GenerationConfig
    context_length: int | None
    load_seconds: float


class Engine:
    """One model (and its adapters) ready to generate text.

    ``model_id``: a Hub id, a local folder saved with ``save_pretrained``, a
    ``.gguf`` file or a GGUF repo on the Hub (``owner/repo-GGUF:Q4_K_M``);
    ``None`` is the embedded default model. ``backend``: ``auto`` (llama.cpp
    for a GGUF source when installed, else transformers), or a backend's
    name. ``threads``: CPU threads (llama.cpp's per engine; torch's for the
    whole process). ``family`` overrides detection; other keyword arguments are
    family options the plugins declare (e.g. ``enable_thinking=True`` for Qwen3).
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
        backend: str = "auto",
        threads: int | None = None,
        progress: bool = True,
        max_loaded_adapters: int | None = None,
        max_adapter_bytes: int | None = None,
        merge_adapters: bool = False,
        **family_options: Any,
    ):
        from adaptrix.models.modelconfig import check_model_id

        if family_options:
            from adaptrix.plugins import family_options as fo
            from adaptrix.plugins.host import get_host

            fo.check_known(family_options, get_host(), _ENGINE_ARGUMENTS)
        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        if not isinstance(backend, str) or not backend.strip():
            raise BackendError(f"backend must be 'auto' or a backend's name, got {backend!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive whole number or None (the backend's default), got {threads!r}")
        self.model_id = None if model_id is None else check_model_id(model_id)
        self.device = device
        self.dtype = dtype
        self.adapters_dir = adapters_dir
        self.trust_remote_code = bool(trust_remote_code)
        self.revision = revision
        self.family_override = family
        self.backend = backend.strip().lower()
        self.threads = threads
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
        self._session: Session | None = None

    # -- life cycle ------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return self._session is not None

    @property
    def tokenizer(self):
        return self._require_loaded().runner.loaded.tokenizer

    @property
    def model(self):
        """The backend's base model (a ``transformers`` module on the reference backend)."""
        return self._require_loaded().runner.loaded.model

    @property
    def runner(self):
        """The backend's :class:`~adaptrix.backends.contract.Runner` (after ``initialize()``)."""
        return self._require_loaded().runner

    def initialize(self) -> bool:
        """Resolve the source, choose the backend, load the model through it. Returns ``True`` (errors raise).

        Calling it again on an initialized engine does nothing. A failure leaves
        the engine uninitialized (and ``initialize`` may be called again).
        """
        with self._lock:
            if self._session is None:
                self._session = self._load()
        return True

    def _load(self) -> Session:
        import time

        from adaptrix.models import modelconfig
        from adaptrix.backends.choice import choose_backend
        from adaptrix.plugins.host import get_host
        from adaptrix.models.source import resolve_source

        start = time.perf_counter()
        host = get_host()
        src = resolve_source(self.model_id, revision=self.revision, family=self.family_override, host=host)
        if self.family_options:
            from adaptrix.plugins import family_options as fo

            fo.check_family(self.family_options, host, src.family)
        choice = choose_backend(src, self.backend, host)
        options = LoadOptions(
            device=str(self.device),
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            revision=src.load_revision,
            family_options=dict(self.family_options),
            config=src.config,
            config_source=src.config_source,
            progress=self.progress,
            threads=self.threads,
        )
        runner = choice.backend.load(src, options, host)
        try:
            src = runner.source  # the backend may have converted it (a GGUF into a cached folder)
            family_gen, _ = host.call_family("default_generation_config", src.family, config=src.config)
            family_gen = (family_gen or GenerationConfig()).merged_over(
                GenerationConfig(context_length=modelconfig.context_length(src.config))
            )
            # the smaller of what the config says and what the backend allocated (llama.cpp caps its KV cache)
            known = [c for c in (family_gen.context_length, runner.context_length) if c]
            ctx = min(known) if known else None
            if ctx is None:
                limit = getattr(runner.loaded.tokenizer, "model_max_length", None)
                ctx = limit if isinstance(limit, int) and 0 < limit < 10**7 else None
            adapters = runner.adapter_manager(
                self.adapters_dir, max_loaded_adapters=self.max_loaded_adapters,
                max_adapter_bytes=self.max_adapter_bytes, merge=self.merge_adapters, lock=self._lock,
                host=host,
            )
        except BaseException:
            runner.close()
            raise
        self.family, self.plugin = src.family, src.plugin
        return Session(src, choice, runner, adapters, family_gen, ctx, time.perf_counter() - start)

    def cleanup(self) -> None:
        """Release the model, its adapters and every conversation; ``initialize()`` loads again."""
        with self._lock:
            session, self._session = self._session, None
            if session is None:
                return
            try:
                session.adapters.close()
            finally:
                session.runner.close()
                self.conversations.reset()

    def __enter__(self) -> "Engine":
        self.initialize()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _require_loaded(self) -> Session:
        if self._session is None:
            raise EngineStateError(
                "the engine has no model loaded: call engine.initialize() first (again after cleanup())"
            )
        return self._session

    # -- settings ----------------------------------------------------------------
    def resolve_settings(self, task_type: str | None = None, adapter=UNSET, **settings) -> GenerationConfig:
        """The settings a call with these arguments would use (explicit > task > family > global)."""
        self._require_loaded()
        explicit = explicit_settings(**settings)
        task = task_type if task_type is not None else self._adapter_task_type(adapter)
        return self._resolve(explicit, task)

    def _resolve(self, explicit: GenerationConfig, task: str | None) -> GenerationConfig:
        session = self._require_loaded()
        cfg = resolve_settings(explicit, task, session.family_defaults)
        ctx = session.context_length
        cfg = attrs.evolve(cfg, context_length=ctx)
        if ctx is not None:
            if explicit.max_new_tokens is not None and explicit.max_new_tokens >= ctx:
                raise GenerationError(
                    f"max_new_tokens={explicit.max_new_tokens} does not fit in the context of "
                    f"{session.source.model_id} ({ctx} tokens); ask for fewer new tokens"
                )
            if explicit.max_new_tokens is None and cfg.max_new_tokens >= ctx // 2:
                # a default larger than half the window would leave almost no room for the prompt
                cfg = attrs.evolve(cfg, max_new_tokens=max(1, ctx // 2))
        return cfg

    def _adapter_task_type(self, adapter=UNSET) -> str | None:
        """The task preset declared by the adapter's adaptrix.json, if it names one.

        A task type adaptrix has no preset for (an adapter's own label such as
        "style") selects nothing rather than failing the generation.
        """
        from adaptrix.generation.defaults import TASK_PRESETS

        m = self._require_loaded().adapters
        if adapter is None:
            return None
        if adapter is UNSET:
            adapter = m.active
        if not isinstance(adapter, str):
            return None
        try:
            task = m.info(adapter).task_type
        except Exception:
            return None
        return task if task in TASK_PRESETS else None

    # -- prompt formatting ---------------------------------------------------------
    def _conversation_for(self, req: GenerationRequest) -> Conversation | None:
        if req.raw:
            return None
        if req.history:  # the request's own messages: a throw-away conversation, stored nowhere
            return Conversation(name="request", messages=[dict(m) for m in req.history])
        if req.conversation is not None:
            return self.conversations.get(req.conversation)
        use = self.use_context_by_default if req.use_context is None else req.use_context
        return self.conversations.get() if use else None

    def _prepare(self, req: GenerationRequest, conv: Conversation | None) -> PreparedRequest:
        """Resolve ``req``'s settings and format its prompt (with ``conv``'s history) as it will run."""
        session = self._require_loaded()
        loaded = session.runner.loaded
        task = req.task_type if req.task_type is not None else self._adapter_task_type(req.adapter)
        cfg = self._resolve(req.settings, task)
        template_kwargs = dict(loaded.chat_template_kwargs)
        template_kwargs.update(req.chat_template_kwargs)
        if req.enable_thinking is not None:
            template_kwargs["enable_thinking"] = bool(req.enable_thinking)
        try:
            formatted = self._format(req.prompt, cfg.max_new_tokens, conv, req.system, template_kwargs, req.raw)
        except ContextOverflowError:
            if req.settings.max_new_tokens is not None or session.context_length is None:
                raise
            # No max_new_tokens was asked for and the default does not fit beside this prompt: answer with
            # what the context leaves after the prompt (older turns dropped first, the answer matters more).
            formatted = self._format(req.prompt, None, conv, req.system, template_kwargs, req.raw)
            cfg = attrs.evolve(cfg, max_new_tokens=session.context_length - len(formatted.input_ids))
        spans = () if req.show_thinking else tuple(loaded.hidden_spans)
        return PreparedRequest(
            prompt=formatted,
            settings=cfg,
            stops=tuple(cfg.stop or ()) + formatted.stops,
            spans=spans,
            inside=open_span(formatted.text, spans),
            eos_ids=tuple(session.runner.eos_ids),
            pad_id=session.runner.pad_id,
        )

    def _format(self, prompt, max_new_tokens, conv, system, template_kwargs, raw) -> Prompt:
        """The prompt formatted to leave ``max_new_tokens`` of the context; ``None``: at least one token,
        without history (the overflow error then names the prompt and the context only)."""
        session = self._require_loaded()
        tokenizer = session.runner.loaded.tokenizer
        ctx = session.context_length
        budget = None if ctx is None else ctx - (1 if max_new_tokens is None else max_new_tokens)
        name = session.source.model_id
        if raw:
            ids = list(tokenizer(prompt)["input_ids"])
            if budget is not None and len(ids) > budget:
                raise ContextOverflowError(
                    f"the prompt is {len(ids)} tokens; the context of {name} is {ctx} tokens and "
                    + (f"max_new_tokens={max_new_tokens} leaves room for {budget}: shorten the prompt or "
                       "lower max_new_tokens" if max_new_tokens is not None else
                       "leaves no room for an answer: shorten the prompt")
                )
            return Prompt(prompt, tuple(ids), ({"role": "user", "content": prompt},), 0, False)
        if conv is not None and system is None:
            system = conv.system
        turns = conv.turns() if conv is not None else []
        formatted = build_prompt(
            tokenizer,
            prompt,
            history=turns if max_new_tokens is not None else [],
            system=system,
            template_kwargs=template_kwargs,
            budget=budget,
            model_name=name,
            max_new_tokens=max_new_tokens,
            context_length=ctx,
        )
        return formatted if max_new_tokens is not None else attrs.evolve(formatted, trimmed_turns=len(turns))

    def _stop_check(self, prepared: Sequence[PreparedRequest]):
        """``stop(row, new_ids)`` for the runner: True once a row's visible text holds one of its stop strings."""
        if not any(p.stops for p in prepared):
            return None
        return stop_check(self.tokenizer, [(p.spans, p.stops, p.inside) for p in prepared])

    def _remember(self, conv: Conversation | None, req: GenerationRequest, text: str) -> None:
        if conv is not None:
            if req.system is not None:
                conv.system = req.system
            conv.add_turn(req.prompt, text)

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt: str, **options) -> str:
        """Generate a reply to ``prompt`` and return its text.

        Options: sampling settings (``max_new_tokens`` or its seed name
        ``max_length``, ``temperature``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``stop``, ``seed``), ``task_type``, ``adapter``
        (a name, a list, ``None`` for the base model), ``system``,
        ``use_context``, ``conversation`` (a name), ``history`` (this request's
        earlier user/assistant messages, remembered nowhere), ``show_thinking``,
        ``enable_thinking``, ``chat_template_kwargs``, ``raw`` (no chat
        template). See :class:`~adaptrix.generation.request.GenerationRequest`.
        """
        return self.generate_detailed(prompt, **options).text

    def generate_detailed(self, prompt: str | GenerationRequest, **options) -> GenerationResult:
        """Like :meth:`generate`, returning a :class:`~adaptrix.generation.result.GenerationResult`."""
        self._require_loaded()
        req = prompt if isinstance(prompt, GenerationRequest) else GenerationRequest.build(prompt, **options)
        with self._lock:
            session = self._require_loaded()
            with session.adapters.scope(req.adapter):
                conv = self._conversation_for(req)
                prepared = self._prepare(req, conv)
                new = session.runner.generate([prepared.input_ids], prepared.settings,
                                              stop=self._stop_check([prepared]))[0]
                result = finish_row(prepared, new, self.tokenizer)
                self._remember(conv, req, result.text)
                return result

    # -- streaming ------------------------------------------------------------------
    def stream(self, prompt: str | GenerationRequest, **options) -> Iterator[str]:
        """Yield the reply's text in pieces as the model produces them.

        Same options and same text as :meth:`generate` (hidden spans and stop
        strings are handled on the fly). The iterator may be advanced from any
        thread, one at a time (a thread pool's ``iterate_in_threadpool``). From
        the first ``next()`` until the generation ends, the model and the
        stream's adapters belong to the stream: other calls, from any thread,
        wait for it. Closing or dropping the iterator stops the generation.
        """
        self._require_loaded()
        req = prompt if isinstance(prompt, GenerationRequest) else GenerationRequest.build(prompt, **options)
        return self._stream(req)

    def stream_detailed(self, prompt: str | GenerationRequest, **options) -> "DetailedStream":
        """Like :meth:`stream`; once the pieces are exhausted, the stream's ``result`` is the
        :class:`~adaptrix.generation.result.GenerationResult` :meth:`generate_detailed` would return (token counts and
        finish reason of the generation itself, not of its text)."""
        self._require_loaded()
        req = prompt if isinstance(prompt, GenerationRequest) else GenerationRequest.build(prompt, **options)
        return DetailedStream(self._stream(req))

    def _stream(self, req: GenerationRequest) -> Iterator[str]:
        """The stream's generator; it returns the :class:`~adaptrix.generation.result.GenerationResult` (see
        :class:`DetailedStream`). The model is leased to this stream (a token, not a thread) from the
        first ``next()`` until its generation ends: ``next()`` may come from any thread and generates
        there (:meth:`Runner.stream_tokens`); a call made meanwhile, from any thread, this one included,
        finishes the stream's generation into a buffer first (:class:`~adaptrix.generation.lease.LeasedTokens`),
        so it never changes the stream and never deadlocks."""
        import contextlib

        owner = _StreamOwner()
        lease = self._lock
        lease.acquire(owner)
        try:
            with lease.acting_as(owner), contextlib.ExitStack() as held:
                session = self._require_loaded()
                held.enter_context(session.adapters.scope(req.adapter))
                conv = self._conversation_for(req)
                prepared = self._prepare(req, conv)
                decoder = IncrementalDecoder(session.runner.loaded.tokenizer)
                tokens = session.runner.stream_tokens(prepared.input_ids, prepared.settings,
                                                      stop=self._stop_check([prepared]))
                scope = held.pop_all()  # from here on the generation's end restores the adapters
            generation = LeasedTokens(lease, owner, tokens, on_end=scope.close)
        except BaseException:
            lease.release(owner)
            raise
        pipeline = prepared.pipeline()
        pieces: list[str] = []
        try:
            while (token := generation.next()) is not None:
                piece = pipeline.feed(decoder.add((token,)))
                if piece:
                    pieces.append(piece)
                    yield piece
            tail = pipeline.feed(decoder.finish()) + pipeline.flush()
            if tail:
                pieces.append(tail)
                yield tail
            text = "".join(pieces)
            if conv is not None:
                with lease:
                    self._remember(conv, req, text)
        finally:
            generation.close()  # closed, dropped or done: stop the generation and free the model
        return result_of(prepared, decoder.ids, text, decoder.text, pipeline)

    # -- batches ----------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[str], *, adapters: Sequence[str | None] | None = None,
                       **options) -> list[str]:
        """Generate for several prompts at once; each gets what it would get alone.

        ``adapters`` optionally names an adapter per prompt (``None``: base model).
        Prompts are independent: no conversation history is used or recorded.
        Other options as for :meth:`generate` (but ``adapter``, ``use_context``
        and ``conversation``).
        """
        return [r.text for r in self.generate_batch_detailed(prompts, adapters=adapters, **options)]

    def generate_batch_detailed(self, prompts: Sequence[str], *, adapters: Sequence[str | None] | None = None,
                                **options) -> list[GenerationResult]:
        """Like :meth:`generate_batch`, returning a :class:`~adaptrix.generation.result.GenerationResult` per prompt."""
        self._require_loaded()
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise GenerationError("generate_batch takes a list of prompts; use generate() for a single one")
        for key in ("adapter", "use_context", "conversation", "history"):
            if key in options:
                raise GenerationError(f"generate_batch takes no {key}= (prompts are independent; use adapters=)")
        if not prompts:
            return []
        requests = [GenerationRequest.build(p, what=f"prompts[{i}]", use_context=False, **options)
                    for i, p in enumerate(prompts)]
        if adapters is not None and (isinstance(adapters, str) or len(adapters) != len(prompts)):
            raise GenerationError(
                f"adapters has {len(adapters)} entries for {len(prompts)} prompts; give one per prompt"
            )
        with self._lock:
            session = self._require_loaded()
            prepared = [self._prepare(r, None) for r in requests]
            try:
                rows = session.runner.generate(
                    [p.input_ids for p in prepared], prepared[0].settings,
                    adapters=list(adapters) if adapters is not None else None, stop=self._stop_check(prepared),
                )
            finally:
                session.adapters.settle()  # a batch may keep more adapters resident than the budget
            return [finish_row(p, new, self.tokenizer) for p, new in zip(prepared, rows)]

    # -- conversations -------------------------------------------------------------
    def reset_context(self, conversation: str | None = None) -> None:
        """Forget a named conversation, or every conversation when no name is given."""
        with self._lock:
            self.conversations.reset(conversation)

    def get_history(self, conversation: str | None = None) -> list[dict[str, str]]:
        """A copy of a conversation's messages (the default conversation when no name is given)."""
        conv = self.conversations.get(conversation)
        return [dict(m) for m in conv.messages]

    # -- adapters ------------------------------------------------------------------------
    @property
    def adapters(self):
        """The backend's :class:`~adaptrix.adapters.manager.AdapterManager` (after ``initialize()``)."""
        return self._require_loaded().adapters

    def load_adapter(
        self, name_or_path: str | Path, *, name: str | None = None, allow_pickle: bool = False, activate: bool = True
    ) -> bool:
        """Validate then load an adapter (name in adapters_dir, folder, or Hub id); make it active by default.

        Returns ``True``; ``engine.adapters.info(name)`` describes it. Raises
        :class:`~adaptrix.errors.AdapterIncompatibleError` (``.report``) when
        validation fails; the engine is then unchanged.
        """
        self.adapters.load(name_or_path, name=name, allow_pickle=allow_pickle, activate=activate)
        return True

    def unload_adapter(self, name: str) -> bool:
        """Remove a loaded adapter; when it was active, the rest (or the base) stays active. Returns ``True``."""
        self.adapters.unload(name)
        return True

    def switch_adapter(self, name: str | Sequence[str] | None, *, merge: bool | None = None) -> bool:
        """Make ``name`` active (None: base model; a list: several summed); loads it when needed. Returns ``True``."""
        self.adapters.switch(name, merge=merge)
        return True

    def list_adapters(self) -> list[dict[str, Any]]:
        """Available, loaded and evicted adapters, with ``active`` marked (before ``initialize()`` too)."""
        if self._session is None:
            from adaptrix.adapters.sources import available_adapters

            return [
                {"name": n, "path": str(p), "loaded": False, "state": "available", "active": False, "merged": False}
                for n, p in available_adapters(self.adapters_dir).items()
            ]
        return self._session.adapters.list()

    @property
    def active_adapter(self) -> str | tuple[str, ...] | None:
        """The active adapter name, a tuple when several are active, None for the base model."""
        return None if self._session is None else self._session.adapters.active

    def validate_adapter(self, name_or_path: str | Path, *, allow_pickle: bool = False):
        """A :class:`~adaptrix.adapters.validate.CompatibilityReport` for the loaded model; loads no weights."""
        return self.adapters.validate(name_or_path, allow_pickle=allow_pickle)

    def compose_adapters(
        self,
        weights: dict[str, float],
        name: str,
        method: str = "linear",
        *,
        density: float | None = None,
        svd_rank: int | None = None,
        activate: bool = False,
    ):
        """Create adapter ``name`` from ``{adapter: weight}`` (peft's ``add_weighted_adapter`` methods)."""
        return self.adapters.compose(weights, name, method, density=density, svd_rank=svd_rank, activate=activate)

    def merge_adapter(self) -> None:
        """Merge the active adapter into the weights (base speed); undone before any switch."""
        self.adapters.merge()

    def unmerge_adapter(self) -> None:
        """Restore the exact base weights; the adapter stays active, unmerged."""
        self.adapters.unmerge()

    def configure_adapters(
        self, *, max_loaded_adapters: int | None = None, max_adapter_bytes: int | None = None, merge: bool | None = None
    ) -> None:
        """Residency limits (LRU) and merge mode; applies now and to later models."""
        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        if self._session is not None:
            self._session.adapters.configure(
                max_loaded_adapters=max_loaded_adapters, max_adapter_bytes=max_adapter_bytes, merge=merge
            )
        self.max_loaded_adapters = max_loaded_adapters
        self.max_adapter_bytes = max_adapter_bytes
        if merge is not None:
            self.merge_adapters = merge

    # -- information -----------------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        """Family, plugin, backend, model, source, size, dtype, device, context, defaults, adapters."""
        from adaptrix.generation.defaults import GLOBAL_DEFAULTS

        session = self._require_loaded()
        src, loaded = session.source, session.runner.loaded
        config = src.config or {}
        archs = config.get("architectures") or []
        info: dict[str, Any] = {
            "family": self.family,
            "plugin": self.plugin,
            "backend": session.backend.name,
            "backend_reason": session.backend.reason,
            "model_id": src.model_id,
            "source": src.path or (str(src.gguf_file) if src.gguf_file else src.model_id),
            "gguf_file": str(src.gguf_file) if src.gguf_file else None,
            "model_type": config.get("model_type"),
            "architecture": archs[0] if archs else None,
            **session.runner.info(),
            "context_length": session.context_length,
            "generation_defaults": attrs.evolve(session.family_defaults.merged_over(GLOBAL_DEFAULTS),
                                                context_length=session.context_length).as_dict(),
            "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
            "chat_template_kwargs": dict(loaded.chat_template_kwargs),
            "hidden_spans": [list(p) for p in loaded.hidden_spans],
            "use_context_by_default": self.use_context_by_default,
            "conversations": self.conversations.names(),
            "load_seconds": round(session.load_seconds, 3),
            "notes": list(loaded.notes),
        }
        info.update(session.adapters.status())
        return info

    # -- serving seam (adaptrix serve) ----------------------------------------------------------------
    # A step-level decoder (iteration-level batching) runs the model itself: prepare_request formats a
    # request exactly as generate() would; step_decoder gives the backend's decoder
    # (adaptrix.generation.steps.StepDecoder), built by the runner from its own model and adapter manager,
    # holding this engine's model lease, and ending rows with generate()'s own result (finish_row).
    def prepare_request(
        self, prompt: str, *, history: Sequence[dict[str, str]] = (), **options
    ) -> PreparedRequest:
        """Resolve settings and format ``history + prompt`` as :meth:`generate_detailed` would; generate nothing.

        ``history``: earlier ``{"role", "content"}`` messages (user/assistant),
        trimmed oldest first to fit the context. Bad settings and prompts that do
        not fit raise the same errors as ``generate``.
        """
        self._require_loaded()
        req = GenerationRequest.build(prompt, use_context=False, history=list(history), **options)
        with self._lock:
            self._require_loaded()
            return self._prepare(req, self._conversation_for(req))

    def step_decoder(self, max_rows: int = 8, *, batch_invariant: bool = False) -> StepDecoder | None:
        """The backend's step-level decoder for up to ``max_rows`` rows
        (:class:`~adaptrix.generation.steps.StepDecoder`), or ``None``: serve one request at a time.

        A backend has one when its runner declares ``"step_decode"`` in ``capabilities`` (and the model
        allows it). ``batch_invariant=True``: every row is computed exactly as the request alone (one
        forward or ``llama_decode`` per row), so each greedy answer equals ``generate``'s, whatever decodes
        beside it; only runners that declare ``"batch_invariant"`` can. Batched rows (the default) are
        faster but may round differently and, rarely, change a greedy answer. See docs/serve.md."""
        with self._lock:
            runner = self.runner
            if "step_decode" not in runner.capabilities:
                return None
            if batch_invariant and "batch_invariant" not in runner.capabilities:
                raise BackendError(
                    f"the {runner.backend} backend's step decoder cannot compute rows as if alone "
                    "(batch_invariant); serve one request at a time (adaptrix serve --no-batching) for answers that "
                    "never depend on the batch"
                )
            decoder = runner.step_decoder(lease=self._lock, max_rows=max_rows, batch_invariant=bool(batch_invariant))
            if decoder is not None and not isinstance(decoder, StepDecoder):
                raise BackendError(
                    f"the {runner.backend} backend's step_decoder returned a {type(decoder).__name__}, which lacks "
                    "what adaptrix.generation.steps.StepDecoder requires (rows, add, add_many, step, remove, tail, "
                    "finish, close); fix the backend or remove 'step_decode' from its runner's capabilities"
                )
            return decoder


#: The seed design's name for the engine.
ModularAdaptrixEngine = Engine


class DetailedStream:
    """The text pieces of a generation (:meth:`Engine.stream_detailed`); ``result`` once they are exhausted.

    ``result`` is ``None`` until the generation has ended, and stays ``None`` for
    a stream closed early. ``close()`` (or dropping the stream) stops the generation.
    """

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> "DetailedStream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as end:
            if end.value is not None:
                self.result = end.value
            raise

    def close(self) -> None:
        self._pieces.close()


class _StreamOwner:
    """The identity a stream holds the model lease under (hashable by identity)."""

    __slots__ = ("__weakref__",)
