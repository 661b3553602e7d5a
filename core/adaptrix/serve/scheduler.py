"""The scheduler: one thread owns the engine and runs every request and adapter change.

Request handlers never touch the engine: they :meth:`Scheduler.submit` a
:class:`Job` (answered through its ``emit`` callback, from the scheduler
thread) or :meth:`Scheduler.call` a function on the engine (adapter loads,
listings). Two modes:

- **batched** (backends whose runner declares ``"step_decode"``, see
  :meth:`adaptrix.Engine.step_decoder`: transformers, llama.cpp): an
  iteration-level loop around that decoder, driven only through the
  :class:`~adaptrix.generation.steps.StepDecoder` protocol; queued requests join the running
  batch between decode steps, whatever their adapter (a decoder that is full
  for now, :class:`~adaptrix.errors.BatchFullError`, leaves them queued);
- **serial** (any backend): one request at a time through the Engine's
  ``generate_detailed`` / ``stream``.

An adapter call (load, replace, unload: ``call(fn, changes={name})``) runs
between two decode steps once no running request uses one of its adapters
(directly or in a composition), so requests in flight finish with the old
weights; meanwhile queued requests that need one of them wait, and get the new
weights. Every other request keeps running and joining, and a call whose
adapters no running request uses (loading a new name) runs at the next step.
A request whose adapter was unloaded while it waited is answered 404.

With a residency budget (``max_loaded_adapters``), a batch never uses more
adapters than the budget: a request whose adapter would exceed it waits until
a running adapter's rows have all finished (only base-model requests pass it
meanwhile, so it cannot starve).

The scheduler only queues and admits: what a request decodes with (its adapter,
or the composition of its ``adapters``, built or reused) comes from the adapter
manager's :meth:`~adaptrix.adapters.manager.AdapterManager.hold`, held while
the request runs (never evicted or unloaded meanwhile) and released when it
ends; a request's earlier messages go to the engine as ``history=``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterable

from adaptrix.adapters.compositions import composition_name
from adaptrix.errors import (
    AdapterError,
    AdapterIncompatibleError,
    AdaptrixError,
    BatchFullError,
    EngineStateError,
    GenerationError,
    StorageError,
)
from adaptrix.generation.result import GenerationResult
from adaptrix.generation.steps import Row, StepDecoder
from adaptrix.serve.errors import ApiError
from adaptrix.serve.logprobs import echo_job, replay, score_job, score_only
from adaptrix.serve.schemas import CompletionRequest

log = logging.getLogger("adaptrix.serve")


class Job:
    """One completion request; ``emit(event)`` is called from the scheduler thread.

    Events: ``("delta", text)``, ``("done", result)`` with ``result`` the generation's
    :class:`~adaptrix.generation.result.GenerationResult` (text, token counts and finish reason as the
    generation itself counted them; ``logprobs`` filled when the request asks), and ``("error", ApiError)``.
    A streamed request with logprobs gets ``("delta", text, TokenLogprob)``, one per generated token, as it is
    generated (a step decoder's logprob of that step; a backend without one: all at the end, scored then), and
    its pipeline's held-back tail as a plain ``("delta", text)``. With ``echo``, ``echo_text`` (and
    ``prompt_logprobs``) are set before ``done``.
    """

    def __init__(self, request: CompletionRequest, emit: Callable[[tuple], None]):
        self.request = request
        self.emit = emit
        self.cancelled = threading.Event()
        self.arrived = time.perf_counter()
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.tokens = 0
        self.echo_text: str | None = None
        self.prompt_logprobs: tuple = ()

    @property
    def per_token(self) -> bool:
        """A stream with logprobs: one delta per generated token, with its logprob."""
        return self.request.stream and self.request.logprobs is not None

    @property
    def label(self) -> str:
        """The metrics label: adapter name, ``base`` or ``composed``."""
        if self.request.composition:
            return "composed"
        return self.request.adapter or "base"


class _Call:
    def __init__(self, fn, changes: frozenset[str]):
        #: The adapter names ``fn`` changes (loads, replaces, unloads).
        self.fn, self.changes = fn, changes
        self.future: concurrent.futures.Future = concurrent.futures.Future()


def api_error(exc: BaseException) -> ApiError:
    """The HTTP answer for an exception raised by the engine."""
    if isinstance(exc, ApiError):
        return exc
    message = str(exc)
    if isinstance(exc, StorageError):  # the server writes only into its cache: full (507) or unusable (503)
        if exc.no_space:
            return ApiError(507, message, code="insufficient_storage")
        return ApiError(503, message, code="cache_unavailable")
    if isinstance(exc, AdapterIncompatibleError):
        extra = {"report": exc.report.as_dict()} if getattr(exc, "report", None) is not None else {}
        return ApiError(400, message, param="model", code="adapter_incompatible", extra=extra)
    if isinstance(exc, GenerationError):
        param = exc.param or ("max_tokens" if "max_new_tokens" in message else None)
        message = message.replace("max_new_tokens", "max_tokens")
        return ApiError(400, message, param=param, code="invalid_value")
    if isinstance(exc, AdapterError):
        return ApiError(400, message, param="model", code="adapter_error")
    if isinstance(exc, EngineStateError):
        return ApiError(503, message, code="not_ready")
    if isinstance(exc, AdaptrixError):
        return ApiError(400, message, code="invalid_value")
    log.exception("internal error", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__}: {exc}); this is a bug in adaptrix, please report it",
                    code="internal_error")


class Scheduler:
    """Owns ``engine`` on its own thread; see the module docstring. The local
    :class:`~adaptrix.serve.executor.Executor`."""

    def __init__(self, engine, metrics, *, max_batch: int = 8, max_queue: int = 64, batching: bool = True,
                 exists: Callable[[str], bool] | None = None, batch_invariant: bool = False):
        """``exists(name)``: whether a request may still name adapter ``name`` (None: do not check);
        ``batch_invariant``: each row computed as if alone (passed to the step decoder)."""
        self.engine = engine
        self.batch_invariant = batch_invariant  # passed to the step decoder
        self.metrics = metrics
        self.max_batch = max(1, int(max_batch))
        self.max_queue = max(0, int(max_queue))
        self.batching = batching
        self._exists = exists
        self._jobs: collections.deque[Job] = collections.deque()
        self._calls: collections.deque[_Call] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._decoder: StepDecoder | None = None
        self._running: dict[Row, Job] = {}  # row -> job (batched mode)
        self._resident: set[str] = set()
        self._holds: dict[Row, Any] = {}  # row -> the AdapterHold on what it decodes with (batched mode)
        self._one: Any = False  # serial mode: the one-row step decoder of requests with logprobs (False: not made)

    # -- client side ------------------------------------------------------------
    def start(self) -> None:
        if self.batching:
            self._decoder = self.engine.step_decoder(max_rows=self.max_batch, batch_invariant=self.batch_invariant)
            self.batching = self._decoder is not None
        self._thread = threading.Thread(target=self._loop, name="adaptrix-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a request; a full queue is a 429."""
        with self._cond:
            if len(self._jobs) >= self.max_queue:
                raise ApiError(429, f"the server queue is full ({self.max_queue} requests waiting, --max-queue); "
                               "retry later", code="queue_full")
            self._jobs.append(job)
            self.metrics.queue_depth.set(len(self._jobs))
            self._cond.notify_all()

    def call(self, fn: Callable[[Any], Any], *, changes: Iterable[str] = ()) -> concurrent.futures.Future:
        """Run ``fn(engine)`` on the scheduler thread, between two decode steps.

        ``changes``: the adapter names ``fn`` changes (loads, replaces, unloads): it runs once no running request
        uses them, and requests that need them are not admitted until it has run.
        """
        c = _Call(fn, frozenset(changes))
        with self._cond:
            self._calls.append(c)
            self._cond.notify_all()
        return c.future

    # -- the rest of the Executor protocol (adaptrix.serve.executor): one local engine ------------
    def call_all(self, fn: Callable[[Any], Any], *, changes: Iterable[str] = ()) -> concurrent.futures.Future:
        """One engine here: :meth:`call`."""
        return self.call(fn, changes=changes)

    def model_info(self) -> dict[str, Any]:
        return self.engine.get_model_info()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def tool_format(self) -> Any:
        return self.engine.tool_format

    async def health(self) -> dict[str, Any]:
        return {}

    def occupancy(self) -> dict[str, int]:
        """Requests waiting and decoding right now."""
        with self._cond:
            return {"queued": len(self._jobs), "running": len(self._running)}

    async def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    # -- scheduler thread ----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._calls or self._jobs or self._running):
                    self._cond.wait()
                if self._stopping:
                    break
                call = self._next_call()
                admit = self._admissible() if call is None else []
                self.metrics.queue_depth.set(len(self._jobs))
            if call is not None:
                self._run_call(call)
                continue
            try:
                if self.batching:
                    later = self._admit(admit)
                    if later:  # the decoder is full for now: back to the queue's front
                        with self._cond:
                            self._jobs.extendleft(reversed(later))
                    admit = []
                    self._step()
                else:
                    for job in admit:
                        self._run_serial(job)
            except BaseException as exc:  # a bug: answer everyone, keep serving
                err = api_error(exc)
                for job in list(self._running.values()) + admit:
                    job.emit(("error", err))
                self._reset_batch()
        with self._cond:
            pending = list(self._jobs) + list(self._running.values())
            self._jobs.clear()
        for job in pending:
            job.emit(("error", ApiError(503, "the server is shutting down", code="shutting_down")))

    def _next_call(self) -> _Call | None:
        """Take the first call that may run now (call with the lock held): none of its adapters is used by a
        running request, nor changed by an earlier call still waiting (calls on one name keep their order)."""
        if not self._calls:
            return None
        busy = set().union(*(_needs(job.request) for job in self._running.values()))
        earlier: set[str] = set()
        for i, call in enumerate(self._calls):
            if not call.changes & busy and not call.changes & earlier:
                del self._calls[i]
                return call
            earlier |= call.changes
        return None

    def _admissible(self) -> list[Job]:
        """Take the queued jobs that may join the batch now (call with the lock held).

        FIFO up to the batch size. Cancelled jobs are dropped here, before any prefill. A job that
        needs an adapter a waiting call changes stays queued (it gets the new weights). In batched
        mode a job whose adapter would take the batch past the residency budget stays queued, and
        only base-model jobs pass it.
        """
        limit = self.max_batch if self.batching else 1
        room = limit - len(self._running)
        if room <= 0 or not self._jobs:
            return []
        held = set().union(*(c.changes for c in self._calls))
        budget = self.engine.adapters.max_loaded_adapters if self.batching else None
        using = self.running_adapters()
        admit: list[Job] = []
        waiting: collections.deque[Job] = collections.deque()
        blocked = False
        while self._jobs:
            job = self._jobs.popleft()
            if job.cancelled.is_set():
                self.metrics.cancelled.labels(job.label).inc()
                continue
            if len(admit) >= room or (held and _needs(job.request) & held):
                waiting.append(job)
                continue
            name = self._name_of(job.request)
            if budget is not None and name is not None:
                if blocked or (name not in using and len(using) >= budget):
                    blocked = True
                    waiting.append(job)
                    continue
                using.add(name)
            admit.append(job)
        self._jobs = waiting
        return admit

    def running_adapters(self) -> set[str]:
        """The adapters the running batch's rows decode with."""
        return {row.adapter for row in list(self._running) if row.adapter}

    def _hold(self, req: CompletionRequest):
        """The adapter manager's hold on what ``req`` decodes with (its composition built or reused)."""
        return self.engine.adapters.hold(req.adapter, weights=req.composition)

    def _run_call(self, call: _Call) -> None:
        try:
            call.future.set_result(call.fn(self.engine))
        except BaseException as exc:
            call.future.set_exception(exc)
        self.note_residency()

    def note_residency(self) -> None:
        """Update the loaded-adapters gauge and count evictions (loaded -> evicted)."""
        try:
            rows = self.engine.list_adapters()
        except Exception:
            return
        resident = {r["name"] for r in rows if r.get("loaded")}
        evicted = {r["name"] for r in rows if r.get("state") == "evicted"}
        self.metrics.evictions.inc(len((self._resident - resident) & evicted))
        self._resident = resident
        self.metrics.loaded.set(len(resident))

    # -- adapters of a request --------------------------------------------------------
    def _gone(self, req: CompletionRequest) -> ApiError | None:
        """A 404 when an adapter ``req`` names was unloaded after it arrived (it raced an unload)."""
        if self._exists is None:
            return None
        loaded = set(self.engine.adapters.loaded_names())
        for name in sorted(_needs(req)):
            if name not in loaded and not self._exists(name):
                param = "adapters" if req.composition else "model"
                return ApiError(404, f"adapter {name!r} was unloaded while this request waited; see GET /v1/models "
                                "for the models available now", param=param, code="model_not_found")
        return None

    @staticmethod
    def _name_of(req: CompletionRequest) -> str | None:
        """The name of the adapter serving ``req`` (None: base), without building a composition."""
        return composition_name(req.composition) if req.composition else req.adapter

    # -- batched mode -----------------------------------------------------------------
    def _admit(self, jobs: list[Job]) -> list[Job]:
        """Start ``jobs`` in the batch, prefilled together (or answer them); returns those the decoder
        has no room for yet, to queue again."""
        ready: list[tuple[Job, Any, str | None]] = []
        holds: list[Any] = []
        for job in jobs:
            if job.cancelled.is_set():
                self.metrics.cancelled.labels(job.label).inc()
                continue
            gone = self._gone(job.request)
            if gone is not None:
                job.emit(("error", gone))
                continue
            req = job.request
            hold = None
            try:
                hold = self._hold(req)
                if req.score_only:
                    self._score_only(job, hold.name)
                    hold.release()
                    continue
                prepared = self._prepare(req, hold.name)
                echo_job(self.engine, job, hold.name, prepared)
            except Exception as exc:
                if hold is not None:
                    hold.release()
                job.emit(("error", api_error(exc)))
                continue
            ready.append((job, prepared, hold.name))
            holds.append(hold)
        later: list[Job] = []
        outcomes = self._decoder.add_many(ready) if ready else []
        for (job, prepared, adapter), hold, outcome in zip(ready, holds, outcomes):
            if isinstance(outcome, BaseException):
                hold.release()
                if isinstance(outcome, BatchFullError) and self._running:
                    later.append(job)
                else:
                    job.emit(("error", api_error(outcome)))
                continue
            row, text = outcome
            self.metrics.prompt_tokens.labels(job.label).inc(len(prepared.input_ids))
            self._running[row] = job
            self._holds[row] = hold
            self._token(job, text, row=row)
            if row.finish_reason:
                self._finish(row)
        if any(adapter is not None for _, _, adapter in ready):
            self.note_residency()
        self.metrics.running.set(len(self._running))
        return later

    def _step(self) -> None:
        for row, job in list(self._running.items()):
            if job.cancelled.is_set():
                self._decoder.remove(row)
                del self._running[row]
                self._holds.pop(row).release()
                self._cancelled(job)
        self.metrics.running.set(len(self._running))
        if not self._running:
            return
        for row, text in self._decoder.step():
            self._token(self._running[row], text, row=row)
            if row.finish_reason:
                self._finish(row)
        self.metrics.running.set(len(self._running))

    def _finish(self, row: Row) -> None:
        job = self._running.pop(row)
        hold = self._holds.pop(row)
        if tail := self._decoder.tail(row):
            job.emit(("delta", tail))
        self._decoder.remove(row)
        try:
            result = self._decoder.finish(row)  # with the logprobs its steps recorded, when asked
        except Exception as exc:
            job.emit(("error", api_error(exc)))
            return
        finally:
            hold.release()
        self._done(job, result)

    def _reset_batch(self) -> None:
        self._running.clear()
        for hold in self._holds.values():
            hold.release()
        self._holds.clear()
        self.metrics.running.set(0)
        if self.batching:
            with contextlib.suppress(Exception):  # frees what the old decoder holds (sequences, pins)
                self._decoder.close()
            self._decoder = self.engine.step_decoder(max_rows=self.max_batch, batch_invariant=self.batch_invariant)

    # -- serial mode ----------------------------------------------------------------------
    def _run_serial(self, job: Job) -> None:
        if job.cancelled.is_set():
            self.metrics.cancelled.labels(job.label).inc()
            return
        gone = self._gone(job.request)
        if gone is not None:
            job.emit(("error", gone))
            return
        req = job.request
        self.metrics.running.set(1)
        hold = None
        try:
            hold = self._hold(req)
            if req.score_only:
                self._score_only(job, hold.name)
                return
            kwargs: dict[str, Any] = dict(adapter=hold.name, task_type=req.task_type, system=req.system,
                                          use_context=False, history=req.history, **_options(req), **req.settings)
            prepared = None
            if req.logprobs is not None or req.echo:
                prepared = self._prepare(req, hold.name)
                echo_job(self.engine, job, hold.name, prepared)
            if req.logprobs is not None and self._one_row() is not None:
                self._run_row(job, prepared, hold.name)
                return
            if not req.stream or job.per_token:
                result = self.engine.generate_detailed(req.prompt, **kwargs)
                if prepared is not None:
                    result = score_job(self.engine, job, hold.name, prepared, result)
                self._token(job, result.text, count=len(result.token_ids), emit=not job.per_token)
                self._done(job, result, prepared)
                return
            stream = self.engine.stream_detailed(req.prompt, **kwargs)
            try:
                for piece in stream:
                    if job.cancelled.is_set():
                        self._cancelled(job)
                        return
                    self._token(job, piece)
            finally:
                stream.close()
            result = stream.result  # what the generation itself counted, as generate_detailed reports it
            self._done(job, result)
        except Exception as exc:
            job.emit(("error", api_error(exc)))
        finally:
            if hold is not None:
                hold.release()
            self.metrics.running.set(0)
            if req.adapter or req.composition:
                self.note_residency()

    def _one_row(self):
        """Serial mode's one-row step decoder for requests with logprobs, as ``generate`` (None: none here)."""
        if self._one is False:
            try:
                self._one = self.engine.step_decoder(max_rows=1, batch_invariant=True)
            except AdaptrixError:  # a backend that cannot decode rows as if alone: scored after the generation
                self._one = None
        return self._one

    def _run_row(self, job: Job, prepared, adapter: str | None) -> None:
        """Serial mode: decode ``job`` alone on :meth:`_one_row`, each token sent with its logprob as it comes."""
        decoder = self._one
        row, text = decoder.add(job, prepared, adapter)
        try:
            self._token(job, text, row=row)
            while row.finish_reason is None:
                if job.cancelled.is_set():
                    self._cancelled(job)
                    return
                for _, text in decoder.step():
                    self._token(job, text, row=row)
            if tail := decoder.tail(row):
                job.emit(("delta", tail))
        finally:
            decoder.remove(row)
        self._done(job, decoder.finish(row))

    # -- shared --------------------------------------------------------------------------
    def _token(self, job: Job, text: str, count: int = 1, *, row: Row | None = None, emit: bool = True) -> None:
        """Count ``count`` new tokens of ``job`` and send ``text``; a stream with logprobs gets one delta per
        token, with ``row``'s logprob of it (``emit=False``: they are sent at the end, :meth:`_done`)."""
        now = time.perf_counter()
        if job.first_token is None:
            job.first_token = now
            self.metrics.ttft.labels(job.label).observe(now - job.arrived)
        elif job.last_token is not None:
            self.metrics.itl.labels(job.label).observe(now - job.last_token)
        job.last_token = now
        job.tokens += count
        if job.per_token and row is not None:
            job.emit(("delta", text, row.logprobs[-1]))
        elif text and emit:
            job.emit(("delta", text))

    def _cancelled(self, job: Job) -> None:
        self.metrics.cancelled.labels(job.label).inc()
        self.metrics.requests.labels(job.label, job.request.kind, "cancelled").inc()

    def _done(self, job: Job, result: GenerationResult, prepared=None) -> None:
        """Answer ``job``; a stream with logprobs generated without a step decoder (``prepared`` given) first gets
        its tokens, one per delta, with the logprobs scored after the generation."""
        self.metrics.tokens.labels(job.label).inc(len(result.token_ids))
        self.metrics.requests.labels(job.label, job.request.kind, "ok").inc()
        if job.per_token and prepared is not None:
            pieces = replay(prepared, result.token_ids, self.engine.tokenizer)
            for text, scored in zip(pieces, result.logprobs or ()):
                job.emit(("delta", text, scored))
        job.emit(("done", result))

    def _prepare(self, req: CompletionRequest, adapter: str | None):
        """``req`` formatted as the engine runs it (``max_tokens: 0``: with the default budget)."""
        settings = {k: v for k, v in req.settings.items() if not (k == "max_new_tokens" and v == 0)}
        return self.engine.prepare_request(req.prompt, history=req.history, system=req.system, logprobs=req.logprobs,
                                           task_type=req.task_type, adapter=adapter, **_options(req), **settings)

    def _score_only(self, job: Job, adapter: str | None) -> None:
        """``max_tokens: 0``: generate nothing; with ``echo`` (and ``logprobs``) the prompt is returned (scored)."""
        prepared = self._prepare(job.request, adapter)
        echo_job(self.engine, job, adapter, prepared)
        result = score_job(self.engine, job, adapter, prepared, score_only(self.engine, prepared))
        self.metrics.prompt_tokens.labels(job.label).inc(len(prepared.input_ids))
        self._token(job, "")
        self._done(job, result)


def _options(req: CompletionRequest) -> dict[str, Any]:
    """The engine options of a request: its grammar (``response_format``), and by kind: completions are raw (no
    chat template) and return exactly what the model produced (no whitespace trimmed, no hidden span removed)."""
    options: dict[str, Any] = {"grammar": req.grammar} if req.grammar is not None else {}
    if req.kind == "completion":
        options.update(raw=True, trim=False, show_thinking=True)
        return options
    if req.tool_use is not None:
        options["tools"] = req.tool_use
    if req.prompt_message is not None:
        options["prompt_message"] = req.prompt_message
    return options


def _needs(req: CompletionRequest) -> set[str]:
    """The adapters ``req`` decodes with: its adapter, or the parts of its composition."""
    if req.composition:
        return {name for name, _ in req.composition}
    return {req.adapter} if req.adapter else set()
