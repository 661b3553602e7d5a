"""What a Ray deployment of adaptrix is configured with: one frozen record, from the CLI or ``serve run`` args.

:class:`RayServeConfig` travels to every replica (Ray pickles it): the Engine's options, where adapters come
from, the server settings the core checked (:class:`~adaptrix.serve.options.ServeOptions`) and Ray Serve's
own knobs (replicas or autoscaling, resources per replica, adapters per replica). :func:`from_args` reads
the ``key=value`` arguments of ``serve run adaptrix_ray:build_app`` and of a ``serve deploy`` config's
``args:``; the two spell every option the same way as ``adaptrix serve`` (``--max-adapters-per-replica`` is
``max_adapters_per_replica``).
"""

from __future__ import annotations

from typing import Any

import attrs

from adaptrix.serve.options import ServeOptions


class RayConfigError(ValueError):
    """A Ray serving option with a value that cannot work; the message names the option and what to do."""


def _positive_int(name: str, value: Any, least: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RayConfigError(f"{name}={value!r} is not a whole number") from None
    if number < least or isinstance(value, bool):
        raise RayConfigError(f"{name}={value!r}: must be at least {least}")
    return number


def _resource(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RayConfigError(f"{name}={value!r} is not a number") from None
    if number < 0:
        raise RayConfigError(f"{name}={value!r}: must be 0 or more")
    return number


@attrs.frozen
class RayServeConfig:
    """One adaptrix application on Ray Serve."""

    #: ``Engine(...)`` keyword arguments (model, backend, device, dtype, threads...), no ``adapters_dir``.
    engine: dict[str, Any] = attrs.field(factory=dict)
    #: A folder every node sees, an fsspec URL (``s3://``, ``gs://``, ``file://``), or None.
    adapters_dir: str | None = None
    serve: ServeOptions = attrs.field(factory=ServeOptions)
    #: Fixed replica count; ignored when ``autoscaling`` is set.
    num_replicas: int = 1
    #: Ray Serve's ``autoscaling_config`` (``min_replicas``, ``max_replicas``, ``target_ongoing_requests``...).
    autoscaling: dict[str, Any] | None = None
    #: Adapters resident per replica (the multiplexing LRU); None: the engine's own budget, unbounded.
    max_adapters_per_replica: int = 4
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    #: Where each replica keeps adapters fetched from a URL (default: adaptrix's cache under ``ray-adapters``).
    cache_dir: str | None = None
    app_name: str = "adaptrix"

    def deployment_options(self) -> dict[str, Any]:
        """``EngineReplica.options(...)``: replicas or autoscaling, resources, requests per replica."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            # a replica takes as many requests as it decodes together; the rest wait at the routers
            "max_ongoing_requests": self.serve.max_batch,
            "health_check_period_s": 2, "health_check_timeout_s": 30,
        }
        if self.autoscaling:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.num_replicas
        return options


_ENGINE_KEYS = {"model": "model_id", "model_id": "model_id", "device": "device", "dtype": "dtype",
                "revision": "revision", "backend": "backend", "threads": "threads",
                "trust_remote_code": "trust_remote_code"}
_SERVE_KEYS = {"api_key", "max_batch", "max_queue", "enable_adapter_loading", "allowed_dirs", "max_body_bytes",
               "batching", "model_name", "header_timeout", "body_timeout", "cors_origins", "batch_invariant"}
_AUTOSCALE_KEYS = {"min_replicas", "max_replicas", "target_ongoing_requests", "initial_replicas"}


def _truth(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise RayConfigError(f"{name}={value!r} is not true or false")


def from_args(args: dict[str, Any]) -> RayServeConfig:
    """The config of ``serve run adaptrix_ray:build_app key=value ...`` (values may be strings)."""
    engine: dict[str, Any] = {}
    serve: dict[str, Any] = {}
    autoscaling: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for key, value in dict(args).items():
        if key in _ENGINE_KEYS:
            if key == "threads":
                value = _positive_int(key, value)
            elif key == "trust_remote_code":
                value = _truth(key, value)
            engine[_ENGINE_KEYS[key]] = value
        elif key in _SERVE_KEYS:
            if key in ("max_batch", "max_queue", "max_body_bytes"):
                value = _positive_int(key, value)
            elif key in ("header_timeout", "body_timeout"):
                value = _resource(key, value)
            elif key in ("enable_adapter_loading", "batch_invariant"):
                value = _truth(key, value)
            elif key in ("allowed_dirs", "cors_origins") and isinstance(value, str):
                value = tuple(v for v in value.split(",") if v)
            serve[key] = value
        elif key in _AUTOSCALE_KEYS:
            autoscaling[key] = _resource(key, value) if key == "target_ongoing_requests" else _positive_int(
                key, value, 0)
        elif key in ("num_replicas", "max_adapters_per_replica"):
            top[key] = _positive_int(key, value)
        elif key in ("num_cpus", "num_gpus"):
            top[key] = _resource(key, value)
        elif key in ("adapters_dir", "cache_dir", "app_name"):
            top[key] = str(value) if value not in (None, "") else None
        else:
            known = sorted({*_ENGINE_KEYS, *_SERVE_KEYS, *_AUTOSCALE_KEYS, "num_replicas", "max_adapters_per_replica",
                            "num_cpus", "num_gpus", "adapters_dir", "cache_dir", "app_name"})
            raise RayConfigError(f"unknown option {key!r} for adaptrix_ray:build_app; known: {', '.join(known)}")
    if engine.get("backend", "auto") == "auto":
        engine.pop("backend", None)
    try:
        options = ServeOptions(adapters_dir=top.get("adapters_dir"), **serve)
    except (TypeError, ValueError) as exc:
        raise RayConfigError(str(exc)) from None
    return RayServeConfig(engine=engine, serve=options, autoscaling=autoscaling or None, **top)
