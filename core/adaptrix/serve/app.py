"""The Starlette application: routes, API-key check, body limit, OpenAI-shaped answers.

``create_app(make_engine, options)`` returns an ASGI app. The engine is built
by ``make_engine()`` on a background thread when the app starts; until it is
ready ``/health`` answers 503 and so does every API route. The routes run
requests through an :class:`~adaptrix.serve.executor.Executor`: the local
:class:`~adaptrix.serve.scheduler.Scheduler` around that engine, or what
``create_app(make_executor=...)`` builds (a plugin's remote engines).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from adaptrix.adapters.info import PICKLE_FILE, read_adapter_info
from adaptrix.adapters.sources import available_adapters
from adaptrix.errors import AdapterIncompatibleError, AdapterNotFoundError, AdapterPickleError
from adaptrix.serve import tokenizer_routes
from adaptrix.serve.completions import completions
from adaptrix.serve.errors import ApiError, error_body
from adaptrix.serve.executor import Executor, new_response_headers
from adaptrix.serve.metrics import Metrics
from adaptrix.serve.options import ServeOptions
from adaptrix.serve.scheduler import Scheduler, api_error
from adaptrix.serve.schemas import CompletionRequest, parse_load, parse_name

__all__ = ["ServeOptions", "Server", "create_app"]

log = logging.getLogger("adaptrix.serve")
STATIC = Path(__file__).with_name("static")


class Server:
    """State shared by the routes: the executor (once loaded), metrics, adapter catalog.

    ``scheduler`` is the :class:`~adaptrix.serve.executor.Executor` the routes run requests through;
    ``engine`` is the local engine (``None`` when ``make_executor`` built the executor)."""

    def __init__(self, make_engine: Callable[[], Any] | None, options: ServeOptions,
                 make_executor: Callable[["Server"], Executor] | None = None):
        self.options = options
        self.make_engine = make_engine
        self.make_executor = make_executor
        self.metrics = Metrics()
        self.engine = None
        self.scheduler = None
        self.model_id = options.model_name or "base"
        self.backend: str | None = None  # the engine's backend, once loaded
        self.failure: str | None = None
        self.runtime: dict[str, Path] = {}  # adapters loaded through /v1/load_lora_adapter
        self.created = int(time.time())
        self._private: list[str] = []  # the model's local paths, never shown to clients (see public())

    # -- start-up ------------------------------------------------------------------
    def load(self) -> None:
        start = time.perf_counter()
        engine = None
        try:
            if self.make_executor is not None:
                scheduler = self.make_executor(self)
            else:
                engine = self.make_engine()
                scheduler = Scheduler(engine, self.metrics, max_batch=self.options.max_batch,
                                      max_queue=self.options.max_queue, batching=self.options.batching != "off",
                                      exists=self.adapter_exists, batch_invariant=self.options.batch_invariant)
            scheduler.start()  # batches when the engine's backend has a step decoder for this model
            info = scheduler.model_info()
            batching = scheduler.batching
        except Exception as exc:  # reported by /health and the log; the process stays up
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error("adaptrix serve: the model failed to load: %s", self.failure)
            return
        if not self.options.model_name:
            self.model_id = _display_name(str(info.get("model_id") or "base"))
        self._private = _local_paths(info)
        self.backend = info.get("backend")
        self.engine, self.scheduler = engine, scheduler
        log.info("adaptrix serve: %s ready in %.1f s (%s, %s backend, %s)", self.model_id,
                 time.perf_counter() - start, info.get("family"), self.backend,
                 f"iteration-level batching, up to {scheduler.max_batch} requests"
                 + (", batch-invariant" if scheduler.batch_invariant else "") if batching
                 else "one request at a time")

    def batching_mode(self) -> str:
        """``iteration-level`` (up to ``--max-batch`` requests decode together) or ``one request at a time``."""
        return "iteration-level" if self.scheduler is not None and self.scheduler.batching else "one request at a time"

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    # -- checks ----------------------------------------------------------------------
    def ready(self) -> None:
        if self.scheduler is None:
            if self.failure:
                raise ApiError(503, f"the model failed to load ({self.failure}); fix it and restart the server",
                               code="load_failed")
            raise ApiError(503, "the model is still loading; retry in a moment (GET /health says when it is ready)",
                           code="loading")

    def check_key(self, request) -> None:
        key = self.options.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY' (the server was "
                           "started with --api-key)", code="invalid_api_key")
        # constant time, on bytes: header values arrive decoded as latin-1, the key is ASCII (ServeOptions)
        if not secrets.compare_digest(given.strip().encode("latin-1"), key.encode("ascii")):
            raise ApiError(401, "the API key in the Authorization header is wrong", code="invalid_api_key")

    def public(self, err: ApiError) -> ApiError:
        """``err`` as a client may see it: the model's local paths replaced by its served name."""
        message = err.message
        for path in self._private:
            message = message.replace(path, self.model_id)
        if message == err.message:
            return err
        return ApiError(err.status, message, param=err.param, code=err.code, extra=err.extra)

    async def read_json(self, request) -> Any:
        """The request body as JSON: at most ``--max-body-bytes`` (413), complete within ``--body-timeout``
        seconds of the headers (408); a client that goes away meanwhile is a 499 (one log line)."""
        from starlette.requests import ClientDisconnect

        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"the request body is {int(length)} bytes, over the limit of {limit} bytes "
                           "(--max-body-bytes)", code="body_too_large")
        body = bytearray()
        chunks = request.stream().__aiter__()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.body_timeout
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body did not arrive within {self.options.body_timeout:g} s "
                               f"(--body-timeout); {len(body)} bytes came", code="body_timeout") from None
            except ClientDisconnect:
                raise ApiError(499, "the client went away while sending the body",
                               code="client_disconnected") from None
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over the limit of {limit} bytes (--max-body-bytes)",
                               code="body_too_large")
        if not body:
            raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
        try:
            return json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None

    # -- catalog -----------------------------------------------------------------------
    def adapter_folders(self) -> dict[str, Path]:
        """Every adapter a request may name: the adapters folder, then those loaded at run time."""
        found = dict(available_adapters(self.options.adapters_dir))
        found.update(self.runtime)
        return found

    def adapter_exists(self, name: str) -> bool:
        """Whether a request may still name adapter ``name`` (it may have been unloaded since it arrived)."""
        return name in self.runtime or name in self.adapter_folders()

    def resolve_model(self, req: CompletionRequest) -> CompletionRequest:
        names = self.adapter_folders()
        if req.model in ("base", self.model_id):
            adapter = None
        elif req.model in names:
            adapter = req.model
        else:
            available = ", ".join(["base", self.model_id, *sorted(names)])
            raise ApiError(404, f"model {req.model!r} does not exist; available: {available}", param="model",
                           code="model_not_found")
        if req.composition:
            if adapter is not None:
                raise ApiError(400, f"'adapters' composes adapters over the base model, but 'model' names the adapter "
                               f"{req.model!r}; set 'model' to 'base' or leave 'adapters' out", param="adapters")
            for name, _ in req.composition:
                if name not in names:
                    raise ApiError(400, f"'adapters' names {name!r}, which does not exist; available: "
                                   f"{', '.join(sorted(names)) or '(none)'}", param="adapters",
                                   code="model_not_found")
        return attrs.evolve(req, adapter=adapter)

    def allowed_path(self, raw: str) -> Path:
        """``lora_path`` resolved (symlinks too); it must lie in the adapters folder or an allowed folder."""
        path = Path(raw).expanduser()
        if not path.is_absolute() and self.options.adapters_dir:
            path = Path(self.options.adapters_dir).expanduser() / path
        resolved = path.resolve()
        roots = [Path(d).expanduser().resolve() for d in (self.options.adapters_dir, *self.options.allowed_dirs) if d]
        if not any(resolved == r or r in resolved.parents for r in roots):
            raise ApiError(403, f"'lora_path' {raw!r} resolves to {resolved}, outside the folders adapters may be "
                           f"loaded from ({', '.join(map(str, roots)) or 'none'}); move it there or start the "
                           "server with --allow-adapter-dir", param="lora_path", code="path_not_allowed")
        if not resolved.is_dir():
            raise ApiError(404, f"'lora_path' {raw!r}: no adapter folder at {resolved}", param="lora_path",
                           code="adapter_not_found")
        return resolved


def _local_paths(info: dict) -> list[str]:
    """The model's local paths in ``get_model_info()``, longest first (what :meth:`Server.public` hides)."""
    found = set()
    for key in ("model_id", "source", "gguf_file"):
        value = info.get(key)
        if not isinstance(value, str) or not Path(value).exists():
            continue  # a Hub id, or nothing
        found.add(str(Path(value).resolve()))
        if "/" in value or "\\" in value:  # as the user gave it (a bare name like "." is no path to hide)
            found.add(value)
    return sorted(found, key=len, reverse=True)


def _display_name(model_id: str) -> str:
    path = Path(model_id)
    if path.exists():
        name = path.stem if path.is_file() else path.name
        return name
    return model_id


# -- routes ---------------------------------------------------------------------------


def _json(data: Any, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def _error(err: ApiError):
    from starlette.responses import JSONResponse

    # 408: the request was not read to its end, so the connection cannot carry another one
    headers = {"connection": "close"} if err.status == 408 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _route(server: Server, handler, *, auth: bool = True, ready: bool = True):
    """Wrap a handler: API key, readiness, OpenAI-shaped errors, the executor's headers, one log line."""
    async def endpoint(request):
        start = time.perf_counter()
        headers = new_response_headers()
        try:
            if auth:
                server.check_key(request)
            if ready:
                server.ready()
            response = await handler(server, request)
        except ApiError as err:
            response = _error(server.public(err))
        except Exception as exc:  # a bug: answer in shape, keep serving

            response = _error(server.public(api_error(exc)))
        response.headers.update(headers)
        log.info("%s %s %s %.0f ms%s", request.method, request.url.path, response.status_code,
                 (time.perf_counter() - start) * 1000, " (the client went away)" if response.status_code == 499 else "")
        return response

    return endpoint


async def health(server: Server, request):
    if server.scheduler is None:
        return _json({"status": "failed" if server.failure else "loading", "error": server.failure}, 503)
    return _json({"status": "ok", "model": server.model_id, "backend": server.backend,
                  "batching": server.batching_mode(), **await server.scheduler.health()})


async def metrics(server: Server, request):
    from starlette.responses import Response

    if server.scheduler is None:  # still loading: this process's own metrics
        body, content_type = server.metrics.render()
    else:
        body, content_type = await server.scheduler.render_metrics()
    return Response(body, media_type=content_type)


async def playground(server: Server, request):
    from starlette.responses import FileResponse

    return FileResponse(STATIC / "index.html", media_type="text/html")


async def _model_objects(server: Server) -> list[dict[str, Any]]:
    """OpenAI's model objects: the base model first, then every adapter (folder or loaded at run time)."""
    rows = await asyncio.wrap_future(server.scheduler.call(lambda e: e.list_adapters()))
    resident = {r["name"] for r in rows if r.get("loaded")}
    data = [{"id": server.model_id, "object": "model", "created": server.created, "owned_by": "adaptrix",
             "root": server.model_id, "parent": None,
             "adaptrix": {"kind": "base", "aliases": ["base"], "backend": server.backend}}]
    for name, folder in sorted(server.adapter_folders().items()):
        extra: dict[str, Any] = {"kind": "adapter", "resident": name in resident, "path": str(folder),
                                 "loaded_at_runtime": name in server.runtime}
        try:
            info = read_adapter_info(folder, name)
            targets = info.target_modules
            extra.update(rank=info.rank, alpha=info.alpha,
                         targets=list(targets) if isinstance(targets, (tuple, list)) else targets,
                         task_type=info.task_type, description=info.description)
        except Exception as exc:  # a damaged folder is listed with its problem, never breaks the listing
            extra.update(rank=None, targets=None, error=str(exc))
        data.append({"id": name, "object": "model", "created": server.created, "owned_by": "adaptrix",
                     "root": str(folder), "parent": server.model_id, "adaptrix": extra})
    return data


async def list_models(server: Server, request):
    return _json({"object": "list", "data": await _model_objects(server)})


async def retrieve_model(server: Server, request):
    """``GET /v1/models/{id}``: one model object (the base, by its name or ``base``, or an adapter); 404 in
    OpenAI's error shape for a name that is neither."""
    wanted = request.path_params["model"]
    data = await _model_objects(server)
    for obj in data:
        if obj["id"] == wanted or (obj["parent"] is None and wanted == "base"):
            return _json(obj)
    available = ", ".join(["base", *(obj["id"] for obj in data)])
    raise ApiError(404, f"model {wanted!r} does not exist; available: {available}", param="model",
                   code="model_not_found")


async def chat_completions(server, request):
    return await completions(server, request, "chat")


async def text_completions(server, request):
    return await completions(server, request, "completion")


async def load_adapter(server: Server, request):
    if not server.options.enable_adapter_loading:
        raise ApiError(403, "loading adapters at run time is off; start the server with --enable-adapter-loading",
                       code="adapter_loading_disabled")
    load = parse_load(await server.read_json(request))
    if load.name in ("base", server.model_id):
        raise ApiError(400, f"'lora_name' {load.name!r} is the base model's name; pick another", param="lora_name")
    folder = server.allowed_path(load.path)
    # Runs once no running request uses the name (they finish with the old weights); requests that need it
    # wait meanwhile and get the new weights; every other request, and a new name, waits for nothing.
    # On every engine the executor runs (one here; each replica of a remote executor).
    try:
        result = await asyncio.wrap_future(server.scheduler.call_all(
            functools.partial(replace_adapter, load.name, str(folder), load.path), changes={load.name}))
    except ApiError as err:
        if err.code in ("pickle_refused", "adapter_invalid"):
            server.metrics.validation_failures.inc()
        raise
    server.runtime[load.name] = folder
    server.metrics.loads.inc()
    return _json(result)


def replace_adapter(name: str, folder: str, given: str, engine) -> dict[str, Any]:
    """Load (or atomically replace) adapter ``name`` from ``folder`` on ``engine``: the answer of
    ``/v1/load_lora_adapter``; a 400 when validation refuses it (the old adapter of that name keeps serving).
    ``given``: the ``lora_path`` as the client sent it. Module-level, so a remote executor can send it."""
    try:
        done = engine.adapters.replace(name, folder)
    except AdapterPickleError:
        raise ApiError(400, f"'lora_path' {given!r} holds {PICKLE_FILE}, a pickle, which can run code when "
                       "loaded; convert it to adapter_model.safetensors", param="lora_path",
                       code="pickle_refused") from None
    except AdapterIncompatibleError as exc:
        raise ApiError(400, f"adapter {name!r} at {folder} failed validation: {exc.report.message()}",
                       param="lora_path", code="adapter_invalid", extra={"report": exc.report.as_dict()}) from None
    return {"object": "lora_adapter", "lora_name": name, "lora_path": str(folder),
            "replaced": done.replaced, "rank": done.info.rank, "warnings": list(done.report.warnings)}


async def unload_adapter(server: Server, request):
    if not server.options.enable_adapter_loading:
        raise ApiError(403, "unloading adapters at run time is off; start the server with --enable-adapter-loading",
                       code="adapter_loading_disabled")
    name = parse_name(await server.read_json(request))
    folder = server.runtime.pop(name, None)  # from now on no request may name it (those queued get a 404)
    try:
        result = await asyncio.wrap_future(server.scheduler.call_all(
            functools.partial(unload_adapter_from, name, folder is not None), changes={name}))
    except BaseException:
        if folder is not None:
            server.runtime.setdefault(name, folder)
        raise
    server.metrics.unloads.inc()
    return _json(result)


def unload_adapter_from(name: str, known: bool, engine) -> dict[str, Any]:
    """Unload adapter ``name`` from ``engine`` (compositions built from it go with it): the answer of
    ``/v1/unload_lora_adapter``; a 404 when it is not loaded there and ``known`` (loaded at run time through the
    server, perhaps evicted or never loaded on this engine) is false. Module-level, like :func:`replace_adapter`."""
    try:
        engine.unload_adapter(name)
    except AdapterNotFoundError:
        if not known:
            loaded = {r["name"] for r in engine.list_adapters() if r.get("loaded") or r.get("state") == "evicted"}
            raise ApiError(404, f"adapter {name!r} is not loaded; loaded: {', '.join(sorted(loaded)) or '(none)'}",
                           param="lora_name", code="adapter_not_found") from None
    return {"object": "lora_adapter", "lora_name": name, "unloaded": True}


def create_app(make_engine: Callable[[], Any] | None, options: ServeOptions | None = None, *,
               make_executor: Callable[[Server], Executor] | None = None):
    """The ASGI app; ``make_engine()`` returns an initialized Engine and runs on a background thread.

    ``make_executor(server)``, when given, replaces the engine and its local scheduler: it returns the
    :class:`~adaptrix.serve.executor.Executor` (not yet started) the routes run requests through, built on the
    same background thread (``make_engine`` is then unused). ``server`` is the :class:`Server`: its options,
    metrics and adapter catalog (:meth:`Server.adapter_folders`: which folder a requested adapter is in)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.routing import Route

    server = Server(make_engine, options or ServeOptions(), make_executor)

    def r(path, handler, methods, **kw):
        return Route(path, _route(server, handler, **kw), methods=methods)

    routes = [
        r("/", playground, ["GET"], auth=False, ready=False),
        r("/health", health, ["GET"], auth=False, ready=False),
        r("/metrics", metrics, ["GET"], ready=False),
        r("/v1/models", list_models, ["GET"]),
        r("/v1/models/{model:path}", retrieve_model, ["GET"]),
        r("/v1/chat/completions", chat_completions, ["POST"]),
        r("/v1/completions", text_completions, ["POST"]),
        r("/tokenize", tokenizer_routes.tokenize, ["POST"]),
        r("/detokenize", tokenizer_routes.detokenize, ["POST"]),
        r("/tokenizer_info", tokenizer_routes.tokenizer_info, ["GET"]),
        r("/v1/load_lora_adapter", load_adapter, ["POST"]),
        r("/v1/unload_lora_adapter", unload_adapter, ["POST"]),
    ]

    async def http_error(request, exc: HTTPException):
        message = {404: f"no route {request.url.path}; see GET /v1/models and the OpenAI endpoints",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return _json(error_body(exc.status_code, message), exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        opts = server.options
        if opts.api_key:
            log.info("adaptrix serve: --api-key is set: every route needs 'Authorization: Bearer KEY' except "
                     "GET /health and the playground page GET /, which holds no data and asks for the key")
        if opts.adapters_dir and not Path(opts.adapters_dir).expanduser().is_dir():
            log.warning("adaptrix serve: warning: the adapters folder %s does not exist: no adapter is served from "
                        "it (check --adapters-dir)", opts.adapters_dir)
        if opts.cors_origins:
            log.info("adaptrix serve: browsers may call the API from %s (--cors-origin)", ", ".join(opts.cors_origins))
        threading.Thread(target=server.load, name="adaptrix-load", daemon=True).start()
        try:
            yield
        finally:
            server.stop()

    middleware = []
    if server.options.cors_origins:  # preflights are answered before routing (and need no API key)
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(server.options.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                                     max_age=600))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan,
                    middleware=middleware)
    app.state.server = server
    return app
