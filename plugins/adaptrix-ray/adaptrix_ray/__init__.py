"""adaptrix-ray: ``adaptrix serve`` on Ray Serve, with adapter-affine routing across replicas.

``adaptrix serve --replicas N`` (this plugin's serving mode), ``serve run adaptrix_ray:build_app ...`` and
``serve deploy`` configs all run the same application (:mod:`adaptrix_ray.application`). Importing this
module imports no Ray: ``adaptrix --help`` and ``adaptrix plugins list`` stay fast.
"""

from __future__ import annotations

from typing import Any

from adaptrix.plugins.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def serve_modes():
    from adaptrix_ray.mode import MODE

    return [MODE]


@hookimpl
def caches():
    from adaptrix_ray.store import CACHE

    return [CACHE]


def build_app(args: dict[str, Any]):
    """``serve run adaptrix_ray:build_app model=... adapters_dir=... num_replicas=2``."""
    from adaptrix_ray.application import build_app as build

    return build(args)
