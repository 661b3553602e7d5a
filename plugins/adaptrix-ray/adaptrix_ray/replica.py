"""The engine deployment: each replica runs an Engine with its own local scheduler (its own batching, its own
adapter budget), and holds adapters by Ray Serve's model multiplexing.

The adapter a request names is its multiplexed model id: Ray Serve routes it to a replica that already holds
it, and a replica loads it on first use (fetched from a URL first, validated as everywhere) and evicts the
least recently used beyond ``max_adapters_per_replica``. Base-model requests carry no id and spread over all
replicas. Requests arrive as the ingress validated them (a
:class:`~adaptrix.serve.schemas.CompletionRequest`, every field) and run through the same
:class:`~adaptrix.serve.scheduler.Scheduler` as in one process; their events stream back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any, AsyncIterator

from ray import serve

from adaptrix.engine import Engine
from adaptrix.errors import GenerationError
from adaptrix.generation.token_ids import check_token_ids
from adaptrix.serve.app import replace_adapter
from adaptrix.serve.errors import ApiError
from adaptrix.serve.metrics import Metrics
from adaptrix.serve.scheduler import Job, Scheduler, api_error

from adaptrix_ray.config import RayServeConfig
from adaptrix_ray.store import AdapterStore
from adaptrix_ray.wire import error_dict

log = logging.getLogger("adaptrix.ray")


def _ensure(name: str, folder: str, given: str, engine) -> None:
    """Adapter ``name`` loaded on ``engine`` from ``folder`` (validated); nothing when it already is."""
    rows = {r["name"]: r.get("path") for r in engine.list_adapters() if r.get("state") in ("loaded", "evicted")}
    if name in rows and rows[name] and os.path.realpath(rows[name]) == os.path.realpath(folder):
        return
    replace_adapter(name, folder, given, engine)


def _drop(name: str, engine) -> None:
    """Adapter ``name`` unloaded from ``engine`` if it is there."""
    if any(r["name"] == name and r.get("state") in ("loaded", "evicted") for r in engine.list_adapters()):
        engine.unload_adapter(name)


class _Resident:
    """What the multiplexing cache holds for one adapter; Ray calls ``__del__`` when it evicts it (LRU)."""

    def __init__(self, replica: "EngineReplica", name: str, source: str, epoch: int):
        self.replica, self.name, self.source, self.epoch = replica, name, source, epoch
        self.released = False

    def __del__(self):
        if not self.released:
            self.released = True
            self.replica.evict(self.name, self.epoch)


@serve.deployment(name="EngineReplica")
class EngineReplica:
    """One replica: an Engine, its scheduler, the adapters it holds."""

    def __init__(self, config: RayServeConfig):
        self.config = config
        self.replica_id = _replica_id()
        options = config.serve
        engine = Engine(progress=False, max_loaded_adapters=config.max_adapters_per_replica, adapters_dir=None,
                        **config.engine)
        engine.initialize()
        self.engine = engine
        self.metrics = Metrics()
        self.scheduler = Scheduler(engine, self.metrics, max_batch=options.max_batch, max_queue=options.max_queue,
                                   batching=options.batching != "off", batch_invariant=options.batch_invariant)
        self.scheduler.start()
        self.store = AdapterStore(config.cache_dir)
        self._sources: dict[str, str] = {}  # adapter name -> the source the latest request named
        self._epochs: dict[str, int] = {}

        async def load(name: str) -> _Resident:  # Ray's cache calls this on a miss, evicting LRU first
            return await self._load(name)

        self._load_fn = load
        self._adapter = serve.multiplexed(max_num_models_per_replica=config.max_adapters_per_replica)(load)
        log.info("adaptrix replica %s ready (%s)", self.replica_id, engine.get_model_info().get("backend"))

    # -- adapters -------------------------------------------------------------------------
    async def _load(self, name: str) -> _Resident:
        source = self._sources[name]
        folder = await asyncio.to_thread(self.store.local, source)
        await asyncio.wrap_future(self.scheduler.call(functools.partial(_ensure, name, folder, source),
                                                      changes={name}))
        epoch = self._epochs[name] = self._epochs.get(name, 0) + 1
        return _Resident(self, name, source, epoch)

    def evict(self, name: str, epoch: int) -> None:
        """Unload ``name`` (evicted from the multiplexing cache) unless it was loaded again since."""
        if self._epochs.get(name) == epoch:
            self.scheduler.call(functools.partial(_drop, name), changes={name})

    def _forget(self, name: str) -> None:
        """Take ``name`` out of Ray's multiplexing cache (unloaded cluster-wide), so routing stops preferring
        this replica for it."""
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        models = getattr(wrapper, "models", None)
        if models is not None and name in models:
            resident = models.pop(name)
            resident.released = True
            wrapper._push_multiplexed_replica_info = True
        self._epochs.pop(name, None)

    async def _hold(self, req, sources: dict[str, str]) -> None:
        """The adapters ``req`` decodes with, loaded here: its own through the multiplexing cache, each part of
        a composition directly."""
        self._sources.update(sources)
        if req.adapter:
            resident = await self._adapter(req.adapter)
            if resident.source != sources.get(req.adapter, resident.source):  # replaced since: load the new one
                self._forget(req.adapter)
                await self._adapter(req.adapter)
        for name, _ in req.composition or ():
            folder = await asyncio.to_thread(self.store.local, sources[name])
            await asyncio.wrap_future(self.scheduler.call(functools.partial(_ensure, name, folder, sources[name]),
                                                          changes={name}))

    # -- requests ---------------------------------------------------------------------------
    async def generate(self, req, sources: dict[str, str]) -> AsyncIterator[tuple]:
        """Run one validated request; yields ``("replica", id)`` first, then the job's events (errors as
        dicts, ``done`` with the echo fields)."""
        yield ("replica", self.replica_id)
        job = None
        try:
            if not isinstance(req.prompt, str):
                try:
                    check_token_ids(req.prompt, self.engine.tokenizer, "prompt")
                except GenerationError as exc:
                    raise ApiError(400, str(exc), param="prompt", code="invalid_value") from None
            await self._hold(req, sources)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()
            job = Job(req, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
            self.scheduler.submit(job)
            while True:
                event = await events.get()
                if event[0] == "error":
                    yield ("error", error_dict(event[1]))
                    return
                if event[0] == "done":
                    yield ("done", event[1], job.echo_text, tuple(job.prompt_logprobs))
                    return
                yield event
        except asyncio.CancelledError:  # the client went away: stop its generation between two steps
            if job is not None:
                job.cancelled.set()
            raise
        except Exception as exc:
            yield ("error", error_dict(api_error(exc)))
        finally:
            if job is not None:
                job.cancelled.set()  # harmless once finished

    async def call(self, fn, changes: tuple[str, ...] = ()) -> tuple[str, Any]:
        """``fn(engine)`` between two decode steps: ``("ok", result)`` or ``("error", error dict)``; names in
        ``changes`` that ``fn`` unloaded leave the multiplexing cache too."""
        try:
            result = await asyncio.wrap_future(self.scheduler.call(fn, changes=changes))
        except Exception as exc:
            return ("error", error_dict(api_error(exc)))
        finally:
            if changes:
                loaded = {r["name"] for r in self.engine.list_adapters() if r.get("state") in ("loaded", "evicted")}
                for name in changes:
                    if name not in loaded:
                        self._forget(name)
        return ("ok", result)

    async def info(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "model_info": self.engine.get_model_info(),
                "batching": self.scheduler.batching, "max_batch": self.scheduler.max_batch,
                "tool_format": self.engine.tool_format}

    async def health(self) -> dict[str, Any]:
        """This replica as ``/health`` lists it."""
        import ray

        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        loaded = sorted(r["name"] for r in self.engine.list_adapters() if r.get("loaded"))
        return {"id": self.replica_id, "state": "RUNNING", "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "adapters": sorted(getattr(wrapper, "models", {}) or {}), "loaded": loaded,
                **self.scheduler.occupancy()}

    async def metrics_text(self) -> tuple[str, str]:
        """``(replica id, this replica's adaptrix metrics in Prometheus text)``."""
        body, _ = self.metrics.render()
        return self.replica_id, body.decode()

    async def pid(self) -> int:
        return os.getpid()

    def __del__(self):
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Ray Serve (a test building it by hand)
        return f"local-{os.getpid()}"
