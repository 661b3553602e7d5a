"""What the routes need of whatever runs their requests: the seam between the HTTP app and the engines.

The app (:mod:`adaptrix.serve.app`, :mod:`adaptrix.serve.completions`, :mod:`adaptrix.serve.tokenizer_routes`)
validates a request into a :class:`~adaptrix.serve.schemas.CompletionRequest`, wraps it in a
:class:`~adaptrix.serve.scheduler.Job` and hands it to an :class:`Executor`; it never touches an engine. One
process serves with the local :class:`~adaptrix.serve.scheduler.Scheduler` (one Engine on one thread); a
plugin may serve the same app from engines elsewhere (``adaptrix-ray``: replicas of a Ray Serve deployment),
by passing ``make_executor`` to :func:`adaptrix.serve.app.create_app`. Whatever a request carries (sampling
settings, logprobs, grammar, tools...) travels inside the ``CompletionRequest``, so a new field needs no
change here.

:func:`response_headers` lets an executor add headers to the answer of the request being handled (which
replica served it, say): the app gives each request a fresh dict in a context variable and copies it into
the response.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

_HEADERS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("adaptrix_response_headers",
                                                                                 default=None)


@runtime_checkable
class Executor(Protocol):
    """Runs jobs and engine calls for the app. The local :class:`~adaptrix.serve.scheduler.Scheduler` is one."""

    #: Whether requests decode together (iteration-level batching), and how many at most.
    batching: bool
    max_batch: int
    batch_invariant: bool

    def start(self) -> None:
        """Start serving (called once, before any other call)."""

    def stop(self) -> None:
        """Stop: answer what is queued with 503 and free the engines."""

    def submit(self, job: Any) -> None:
        """Queue a :class:`~adaptrix.serve.scheduler.Job`; its events come through ``job.emit``. Raises
        :class:`~adaptrix.serve.errors.ApiError` (429) when full."""

    def call(self, fn: Callable[[Any], Any], *, changes: Iterable[str] = ()) -> concurrent.futures.Future:
        """``fn(engine)`` on one engine, between two decode steps (listings, tokenizing). A remote executor
        pickles ``fn``: keep it a module-level function or a closure over plain values."""

    def call_all(self, fn: Callable[[Any], Any], *, changes: Iterable[str] = ()) -> concurrent.futures.Future:
        """``fn(engine)`` on every engine (adapter loads and unloads); the first engine's answer. ``changes``:
        the adapter names ``fn`` changes (see :meth:`Scheduler.call`)."""

    def model_info(self) -> dict[str, Any]:
        """The engine's :meth:`~adaptrix.Engine.get_model_info`."""

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer, for checks the app makes before queueing; ``None`` when the engines are
        elsewhere (they check then)."""

    @property
    def tool_format(self) -> Any:
        """The model's :class:`~adaptrix.generation.tools.format.ToolFormat`: the app follows streamed tool calls
        with it."""

    async def health(self) -> dict[str, Any]:
        """Extra fields of ``GET /health`` (a remote executor lists its replicas and their state)."""

    async def render_metrics(self) -> tuple[bytes, str]:
        """``GET /metrics``: the Prometheus text and its content type."""


def response_headers() -> dict[str, str]:
    """The headers to add to the answer of the request being handled (a throwaway dict outside a request)."""
    headers = _HEADERS.get()
    return {} if headers is None else headers


def new_response_headers() -> dict[str, str]:
    """Give the request being handled a fresh, empty dict of extra headers (the app calls this first)."""
    headers: dict[str, str] = {}
    _HEADERS.set(headers)
    return headers
