"""The engine: any causal LM on any backend, with its adapters, one API.

::

    from adaptrix import Engine
    engine = Engine()                     # the embedded SmolLM2-135M-Instruct
    engine.initialize()
    print(engine.generate("What is machine learning?"))
    for piece in engine.stream("Tell me a story", max_new_tokens=64):
        print(piece, end="", flush=True)

The engine names no family and no backend but the reference one. It is a
facade over what ``initialize()`` loads (:mod:`adaptrix.session`: the source,
the backend's :class:`Runner`, its adapter manager, the request preparer of
:mod:`adaptrix.generation.preparer`, which resolves settings and formats
prompts), streaming from any thread (:mod:`adaptrix.streaming`), the
conversations, and one lease on the model so that calls never interleave.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Generator, Iterator, Sequence

from adaptrix import score_requests as scoring
from adaptrix.adapters.manager import AdapterManager
from adaptrix.adapters.residency import check_residency_limits
from adaptrix.adapters.sources import adapter_rows
from adaptrix.backends.contract import Runner
from adaptrix.errors import BackendError, EngineStateError, GenerationError
from adaptrix.generation.conversation import Conversation, ConversationStore
from adaptrix.generation.lease import ModelLease
from adaptrix.generation.matcher import check_capable, grammar_options
from adaptrix.generation.preparer import remember
from adaptrix.generation.request import GenerationRequest, build_batch
from adaptrix.generation.result import GenerationResult, PreparedRequest
from adaptrix.generation.scoring import Score, TokenLogprob
from adaptrix.generation.settings import explicit_settings
from adaptrix.generation.steps import StepDecoder, finish_row
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.generation.tools.messages import split_messages
from adaptrix.models.modelconfig import check_model_id
from adaptrix.plugins import family_options as fo
from adaptrix.plugins.host import get_host
from adaptrix.session import Session, load_session, model_info
from adaptrix.streaming import DetailedStream, stream_pieces
from adaptrix.types import UNSET, GenerationConfig

#: The keyword arguments of ``Engine()`` itself (anything else must be a declared family option).
_ENGINE_ARGUMENTS = (
    "model_id", "device", "dtype", "adapters_dir", "trust_remote_code", "revision", "family", "backend",
    "threads", "progress", "max_loaded_adapters", "max_adapter_bytes", "merge_adapters",
)


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
        if family_options:
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
    def tool_format(self) -> ToolFormat:
        """How the loaded model's family writes tool calls (the ``tool_format`` hook's answer)."""
        return self._require_loaded().preparer.tool_format

    @property
    def runner(self) -> Runner:
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
        session = load_session(
            self.model_id, revision=self.revision, family=self.family_override, family_options=self.family_options,
            backend=self.backend, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
            progress=self.progress, threads=self.threads, adapters_dir=self.adapters_dir,
            max_loaded_adapters=self.max_loaded_adapters, max_adapter_bytes=self.max_adapter_bytes,
            merge_adapters=self.merge_adapters, lock=self._lock,
        )
        self.family, self.plugin = session.source.family, session.source.plugin
        return session

    def cleanup(self) -> None:
        """Release the model, its adapters and every conversation; ``initialize()`` loads again."""
        with self._lock:
            session, self._session = self._session, None
            if session is None:
                return
            try:
                session.manager.close()
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
        preparer = self._require_loaded().preparer
        explicit = explicit_settings(**settings)
        task = task_type if task_type is not None else preparer.adapter_task_type(adapter)
        return preparer.resolve(explicit, task)

    def _conversation_for(self, req: GenerationRequest) -> Conversation | None:
        return self.conversations.for_request(req, self.use_context_by_default)

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt: str, **options) -> str:
        """Generate a reply to ``prompt`` and return its text.

        Options: sampling settings (``max_new_tokens`` or its seed name
        ``max_length``, ``temperature``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``stop``, ``seed``, ``presence_penalty``, ``frequency_penalty``,
        ``logit_bias``), ``task_type``, ``adapter``
        (a name, a list, ``None`` for the base model), ``system``,
        ``use_context``, ``conversation`` (a name), ``history`` (this request's
        earlier user/assistant messages, remembered nowhere), ``show_thinking``,
        ``enable_thinking``, ``chat_template_kwargs``, ``raw`` (no chat
        template), ``grammar`` (a :class:`~adaptrix.generation.grammar.Grammar`: the output follows it) or
        its conveniences ``response_format`` (OpenAI's dict) and ``json_schema`` (a schema dict): see
        docs/structured-output.md; ``tools``/``tool_choice``/``parallel_tool_calls`` (the calls are on
        :meth:`generate_detailed`'s result; see :meth:`chat`). See
        :class:`~adaptrix.generation.request.GenerationRequest`.
        """
        return self.generate_detailed(prompt, **options).text

    def generate_detailed(self, prompt: str | GenerationRequest, **options) -> GenerationResult:
        """Like :meth:`generate`, returning a :class:`~adaptrix.generation.result.GenerationResult`."""
        self._require_loaded()
        req = prompt if isinstance(prompt, GenerationRequest) else GenerationRequest.build(prompt, **options)
        with self._lock:
            session = self._require_loaded()
            with session.manager.scope(req.adapter):
                conv = self._conversation_for(req)
                prepared = session.preparer.prepare(req, conv)
                new = session.runner.generate([prepared.input_ids], prepared.settings,
                                              stop=session.preparer.stop_check([prepared]),
                                              **grammar_options(session.runner, [prepared.grammar]))[0]
                result = scoring.rescored(session.runner, [prepared], [finish_row(prepared, new, self.tokenizer)],
                                          req.logprobs)[0]
                remember(conv, req, result.text)
                return result

    def chat(self, messages: Sequence[dict[str, Any]], **options) -> GenerationResult:
        """Answer an OpenAI-style ``messages`` list (system, user, assistant with ``tool_calls``, ``role:
        "tool"`` results; the last is a user message or a tool result), remembered nowhere.

        Same options as :meth:`generate`, and ``tools=``, ``tool_choice=`` (``auto``, ``none``, ``required``,
        ``{"type": "function", "function": {"name": ...}}``), ``parallel_tool_calls=``: the result's
        ``tool_calls`` are the calls the model made (its ``text`` the rest). See docs/structured-output.md."""
        given = sorted(set(options) & {"history", "system", "prompt_message", "conversation", "use_context"})
        if given:
            raise GenerationError(f"chat() takes the conversation from messages; drop {', '.join(given)}= (a system "
                                  "prompt is a {'role': 'system'} message)")
        chat = split_messages(messages)
        return self.generate_detailed(chat.prompt, history=list(chat.history), system=chat.system,
                                      prompt_message=chat.prompt_message, use_context=False, **options)

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

    def stream_detailed(self, prompt: str | GenerationRequest, **options) -> DetailedStream:
        """Like :meth:`stream`; once the pieces are exhausted, the stream's ``result`` is the
        :class:`~adaptrix.generation.result.GenerationResult` :meth:`generate_detailed` would return (token counts and
        finish reason of the generation itself, not of its text)."""
        self._require_loaded()
        req = prompt if isinstance(prompt, GenerationRequest) else GenerationRequest.build(prompt, **options)
        return DetailedStream(self._stream(req))

    def _stream(self, req: GenerationRequest) -> Generator[str, None, GenerationResult]:
        """The stream's generator (:func:`adaptrix.streaming.stream_pieces`), returning its result."""
        return stream_pieces(self._lock, self._require_loaded, self._conversation_for, req)

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
        requests, row_adapters = build_batch(prompts, adapters, **options)
        if not requests:
            return []
        with self._lock:
            session = self._require_loaded()
            prepared = [session.preparer.prepare(r, None) for r in requests]
            try:
                rows = session.runner.generate(
                    [p.input_ids for p in prepared], prepared[0].settings,
                    adapters=row_adapters, stop=session.preparer.stop_check(prepared),
                    **grammar_options(session.runner, [p.grammar for p in prepared]),
                )
                return scoring.rescored(session.runner, prepared, [finish_row(p, new, self.tokenizer) for p, new in
                                                                   zip(prepared, rows)], requests[0].logprobs, row_adapters)
            finally:
                session.manager.settle()  # a batch may keep more adapters resident than the budget

    # -- scores (adaptrix.generation.scoring) ---------------------------------------------
    def score(self, context: str | Sequence[int], continuation: str | Sequence[int], *, adapter=UNSET,
              top: int = 0) -> Score:
        """The :class:`~adaptrix.generation.scoring.Score` of ``continuation`` after ``context`` (text split as
        lm-eval splits it, or token ids); ``adapter``: a name, ``None``, a ``{name: weight}`` composition."""
        with self._lock:
            session = self._require_loaded()
            with scoring.adapter_scope(session.manager, adapter):
                return scoring.score_batch(session, [(context, continuation)], top=top)[0]

    def score_batch(self, items: Sequence[tuple[str | Sequence[int], str | Sequence[int]]], *,
                    adapters: Sequence[str | dict | None] | None = None, top: int = 0) -> list[Score]:
        """A :class:`~adaptrix.generation.scoring.Score` per ``(context, continuation)``; ``adapters``: one per
        item (mixed in one batch where the backend can), ``None``: the active adapters."""
        with self._lock:
            return scoring.score_batch(self._require_loaded(), items, adapters=adapters, top=top)

    def token_logprobs(self, ids: Sequence[int], *, start: int = 1, adapter=UNSET, top: int = 0) -> list[TokenLogprob]:
        """``ids[start:]``, each scored given the ids before it (``start=0``: ``ids[0]`` has logprob ``None``)."""
        with self._lock:
            session = self._require_loaded()
            with scoring.adapter_scope(session.manager, adapter):
                return scoring.token_logprobs(session.runner, ids, start=start, top=top)

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
    def adapters(self) -> AdapterManager:
        """The backend's :class:`~adaptrix.adapters.manager.AdapterManager` (after ``initialize()``)."""
        return self._require_loaded().manager

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
            return adapter_rows(self.adapters_dir)
        return self._session.manager.list()

    @property
    def active_adapter(self) -> str | tuple[str, ...] | None:
        """The active adapter name, a tuple when several are active, None for the base model."""
        return None if self._session is None else self._session.manager.active

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
            self._session.manager.configure(
                max_loaded_adapters=max_loaded_adapters, max_adapter_bytes=max_adapter_bytes, merge=merge
            )
        self.max_loaded_adapters = max_loaded_adapters
        self.max_adapter_bytes = max_adapter_bytes
        if merge is not None:
            self.merge_adapters = merge

    # -- information -----------------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        """Family, plugin, backend, model, source, size, dtype, device, context, defaults, adapters."""
        return model_info(self._require_loaded(), use_context_by_default=self.use_context_by_default,
                          conversations=self.conversations.names())

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
            session = self._require_loaded()
            if req.grammar is not None:
                check_capable(session.runner)
            return session.preparer.prepare(req, self._conversation_for(req))

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

