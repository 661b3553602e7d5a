"""The ingress side: an :class:`~adaptrix.serve.executor.Executor` whose engines are the replicas of the
engine deployment, reached through a Ray Serve ``DeploymentHandle``.

The app (routes, validation, errors, SSE, API key, playground) is the core's own; this only moves a validated
request to a replica and its events back. A request for an adapter goes with
``multiplexed_model_id=<adapter>`` (Ray routes it to a replica that holds it); a base-model request goes
without (spread over all replicas). The replica's id comes back first and becomes the ``x-adaptrix-replica``
header. A replica that dies under a request answers it 503 (OpenAI's shape); Ray retries a request that had
not reached a replica, and restarts the dead one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

from adaptrix.serve.errors import ApiError
from adaptrix.serve.executor import response_headers
from adaptrix.serve.metrics import Metrics
from adaptrix.serve.scheduler import api_error

from adaptrix_ray.config import RayServeConfig
from adaptrix_ray.metrics import merge_metrics
from adaptrix_ray.store import is_url, join
from adaptrix_ray.wire import error_from, replica_gone

log = logging.getLogger("adaptrix.ray")
#: The header naming the replica that served an answer.
REPLICA_HEADER = "x-adaptrix-replica"
#: Seconds the ingress waits for every replica to answer a broadcast (health, metrics, adapter loads).
BROADCAST_TIMEOUT = 60.0


class RayExecutor:
    """Runs the app's jobs and engine calls on the engine deployment's replicas."""

    def __init__(self, handle, config: RayServeConfig, server, adapters_url: str | None = None):
        self.handle = handle
        self.config = config
        self.server = server  # its adapter catalog says which folder a requested adapter is in
        self.adapters_url = adapters_url  # the fsspec URL the ingress mirrors, if any
        self.metrics: Metrics = server.metrics
        self.batching = True
        self.max_batch = config.serve.max_batch
        self.batch_invariant = config.serve.batch_invariant
        self._info: dict[str, Any] = {}
        self._tool_format = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Wait until a replica answers (the model is loaded there) and note what it serves."""
        info = self.handle.info.remote().result(timeout_s=None)
        self._info = dict(info["model_info"])
        self.batching = bool(info["batching"])
        self._tool_format = info["tool_format"]

    def stop(self) -> None:
        pass  # the replicas belong to Ray Serve; `serve shutdown` (or the CLI's exit) stops them

    def model_info(self) -> dict[str, Any]:
        return dict(self._info)

    @property
    def tokenizer(self) -> None:
        return None  # the replicas check token ids

    @property
    def tool_format(self):
        """The model's tool-call format, as a replica reported it (every replica runs the same model)."""
        return self._tool_format

    # -- requests ----------------------------------------------------------------------------------
    def sources(self, req) -> dict[str, str]:
        """Where each adapter ``req`` uses comes from, as a replica can reach it (a URL's own address, not
        the ingress's copy)."""
        names = ([req.adapter] if req.adapter else []) + [n for n, _ in req.composition or ()]
        folders = self.server.adapter_folders()
        found = {}
        for name in names:
            if name not in folders:
                continue  # unloaded meanwhile: the replica answers 404
            if self.adapters_url and name not in self.server.runtime:
                found[name] = join(self.adapters_url, name)
            else:
                found[name] = str(Path(folders[name]))
        return found

    def submit(self, job) -> None:
        loop = asyncio.get_running_loop()
        headers = response_headers()
        loop.create_task(self._run(job, headers))

    async def _run(self, job, headers: dict[str, str]) -> None:
        req = job.request
        sources = self.sources(req)
        missing = [n for n in ([req.adapter] if req.adapter else []) if n not in sources]
        if missing:
            job.emit(("error", ApiError(404, f"adapter {missing[0]!r} was unloaded while this request waited; see "
                                        "GET /v1/models", param="model", code="model_not_found")))
            return
        handle = self.handle.options(stream=True, multiplexed_model_id=req.adapter or "")
        started = False
        gen = handle.generate.remote(req, sources)
        watch = asyncio.ensure_future(_cancel_when(job, gen))
        try:
            async for event in gen:
                kind = event[0]
                if kind == "replica":
                    headers[REPLICA_HEADER] = event[1] if REPLICA_HEADER not in headers \
                        else headers[REPLICA_HEADER] + ", " + event[1]
                    continue
                started = True
                if kind == "error":
                    job.emit(("error", error_from(event[1])))
                    return
                if kind == "done":
                    _, result, echo_text, prompt_logprobs = event
                    job.echo_text, job.prompt_logprobs = echo_text, tuple(prompt_logprobs)
                    job.emit(("done", result))
                    return
                job.emit(event)
            job.emit(("error", replica_gone(RuntimeError("stream ended early"))))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if job.cancelled.is_set():
                job.emit(("error", ApiError(499, "the client went away", code="client_disconnected")))
            else:
                log.warning("adaptrix ray: request lost with its replica (%s started): %s",
                            "had" if started else "had not", exc)
                job.emit(("error", replica_gone(exc)))
        finally:
            watch.cancel()

    # -- engine calls ----------------------------------------------------------------------------------
    def call(self, fn: Callable[[Any], Any], *, changes: Iterable[str] = ()) -> concurrent.futures.Future:
        """``fn(engine)`` on one replica (Ray pickles ``fn``)."""
        return _future(self._call(fn, tuple(changes)))

    async def _call(self, fn, changes: tuple[str, ...]) -> Any:
        try:
            status, value = await self.handle.call.remote(fn, changes)
        except Exception as exc:
            raise replica_gone(exc) from None
        if status == "error":
            raise error_from(value)
        return value

    def call_all(self, fn: Callable[[Any], Any], *, changes: Iterable[str] = ()) -> concurrent.futures.Future:
        """``fn`` on every running replica; a 404 from some is fine when others succeeded (an adapter a replica
        never held); any other error is the answer."""
        return _future(self._call_all(fn, tuple(changes)))

    async def _call_all(self, fn, changes: tuple[str, ...]) -> Any:
        answers = await self.handle.broadcast("call", fn, changes).results_async(timeout_s=BROADCAST_TIMEOUT)
        oks = [value for status, value in answers if status == "ok"]
        errors = [error_from(value) for status, value in answers if status == "error"]
        hard = [e for e in errors if e.status != 404]
        if hard or not oks:
            raise (hard or errors or [ApiError(503, "no replica is running", code="replica_unavailable")])[0]
        return oks[0]

    # -- /health, /metrics -----------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        """Each running replica (id, pid, adapters held, queued and running requests) and Ray Serve's count
        of replicas by state."""
        try:
            rows = await self.handle.broadcast("health").results_async(timeout_s=5)
        except Exception as exc:  # noqa: BLE001 - /health must answer
            rows = [{"state": "UNKNOWN", "error": f"{type(exc).__name__}: {exc}"}]
        states = await asyncio.to_thread(_replica_states, self.config.app_name)
        return {"replicas": sorted(rows, key=lambda r: str(r.get("id"))), "replica_states": states}

    async def render_metrics(self) -> tuple[bytes, str]:
        """Each replica's adaptrix metrics, labelled ``replica``, merged at the ingress with its own."""
        from prometheus_client import CONTENT_TYPE_LATEST

        try:
            parts = await self.handle.broadcast("metrics_text").results_async(timeout_s=10)
        except Exception as exc:  # noqa: BLE001
            log.warning("adaptrix ray: a replica did not report its metrics: %s", exc)
            parts = []
        own, _ = self.metrics.render()
        return merge_metrics(own.decode(), parts).encode(), CONTENT_TYPE_LATEST


def _future(coro) -> concurrent.futures.Future:
    """A concurrent future for ``coro`` run on the current event loop (what the app awaits through
    ``asyncio.wrap_future``)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    task = asyncio.get_running_loop().create_task(coro)

    def done(t: asyncio.Task) -> None:
        if t.cancelled():
            future.cancel()
        elif t.exception() is not None:
            future.set_exception(t.exception())
        else:
            future.set_result(t.result())

    task.add_done_callback(done)
    return future


async def _cancel_when(job, gen) -> None:
    """Cancel the replica's stream once the job is cancelled (its client went away)."""
    while not job.cancelled.is_set():
        await asyncio.sleep(0.1)
    gen.cancel()


def _replica_states(app_name: str) -> dict[str, int]:
    """Ray Serve's count of the engine deployment's replicas by state (``RUNNING``, ``STARTING``...)."""
    from ray import serve

    try:
        app = serve.status().applications[app_name]
        return dict(app.deployments["EngineReplica"].replica_states)
    except Exception:  # noqa: BLE001
        return {}
