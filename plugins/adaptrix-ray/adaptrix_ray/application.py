"""The Ray Serve application: an ingress deployment (the core's Starlette app) in front of the engine
deployment (:class:`~adaptrix_ray.replica.EngineReplica`, N replicas).

``serve run adaptrix_ray:build_app model=... adapters_dir=... num_replicas=2`` and a ``serve deploy``
config (``import_path: adaptrix_ray:build_app`` with ``args:``) both come here, as does
``adaptrix serve --replicas N``.
"""

from __future__ import annotations

from typing import Any

import attrs
from ray import serve

from adaptrix.serve.app import create_app

from adaptrix_ray.config import RayServeConfig, from_args
from adaptrix_ray.executor import RayExecutor
from adaptrix_ray.replica import EngineReplica
from adaptrix_ray.store import AdapterStore, is_url


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """The HTTP front: the same app as ``adaptrix serve``, its requests run on the engine replicas."""

    def __init__(self, engines, config: RayServeConfig):
        self.engines = engines
        self.config = config
        self.adapters_url = config.adapters_dir if is_url(config.adapters_dir) else None
        options = config.serve
        if self.adapters_url:  # list and describe them from a local copy; replicas fetch their own
            options = attrs.evolve(options, adapters_dir=AdapterStore(config.cache_dir).mirror(self.adapters_url))
        self.options = options

    def __serve_build_asgi_app__(self):
        return create_app(None, self.options, make_executor=lambda server: RayExecutor(
            self.engines, self.config, server, self.adapters_url))


def build(config: RayServeConfig):
    """The bound application for ``config`` (what ``serve.run`` takes)."""
    engines = EngineReplica.options(**config.deployment_options()).bind(config)
    return Ingress.bind(engines, config)


def build_app(args: dict[str, Any]):
    """``serve run adaptrix_ray:build_app key=value ...``: see :func:`adaptrix_ray.config.from_args`."""
    return build(from_args(args))
