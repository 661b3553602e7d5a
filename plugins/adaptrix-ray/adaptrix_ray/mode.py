"""``adaptrix serve --replicas N``: the serving mode this plugin adds (the ``serve_modes`` hook).

Its options join ``adaptrix serve``'s own; every server setting the core parsed (API key, limits, CORS,
adapter loading, batching) reaches the Ray application unchanged. Ray is imported when the mode runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import attrs

from adaptrix.serve.modes import ServeMode


def _at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value:g}")
    return value


def add_arguments(group) -> None:
    group.add_argument("--replicas", type=_at_least(1), metavar="N",
                       help="serve on Ray Serve with N engine replicas (each an Engine with its own batching and "
                       "adapters); without --ray-address a local Ray cluster on 127.0.0.1, stopped on exit")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="run on this existing Ray cluster (host:port or ray://...) instead of a local one")
    group.add_argument("--max-adapters-per-replica", type=_at_least(1), default=4, metavar="K",
                       help="adapters resident per replica, least recently used evicted (default: 4)")
    group.add_argument("--min-replicas", type=_at_least(0), metavar="N", help="autoscaling: fewest replicas")
    group.add_argument("--max-replicas", type=_at_least(1), metavar="N", help="autoscaling: most replicas")
    group.add_argument("--target-ongoing-requests", type=_amount, metavar="R",
                       help="autoscaling: requests per replica Ray Serve aims at (default: Ray's, 2)")
    group.add_argument("--replica-cpus", type=_amount, metavar="C",
                       help="CPUs Ray reserves per replica (default: --threads, else 1)")
    group.add_argument("--replica-gpus", type=_amount, metavar="G",
                       help="GPUs Ray reserves per replica (default: 1 with --device cuda, else 0)")
    group.add_argument("--adapters-cache", metavar="DIR",
                       help="where replicas keep adapters fetched from a URL --adapters-dir (default: adaptrix's "
                       "cache, ray-adapters)")


def selected(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None
               for name in ("replicas", "ray_address", "min_replicas", "max_replicas"))


def config_of(args: argparse.Namespace, options):
    """The :class:`~adaptrix_ray.config.RayServeConfig` of a parsed ``adaptrix serve`` command line."""
    from adaptrix.cli.generate_cmd import engine_options

    from adaptrix_ray.config import RayServeConfig
    from adaptrix_ray.store import is_url

    engine = engine_options(args)
    engine.pop("adapters_dir", None)
    if engine.get("model_id") and not is_url(str(engine["model_id"])) and os.path.exists(engine["model_id"]):
        engine["model_id"] = os.path.abspath(engine["model_id"])  # replicas run in other folders
    adapters = args.adapters_dir
    if adapters and not is_url(adapters):
        adapters = os.path.abspath(os.path.expanduser(adapters))
    autoscaling = {k: v for k, v in (("min_replicas", args.min_replicas), ("max_replicas", args.max_replicas),
                                     ("target_ongoing_requests", args.target_ongoing_requests)) if v is not None}
    if autoscaling:
        autoscaling.setdefault("min_replicas", 1)
        autoscaling.setdefault("max_replicas", max(autoscaling["min_replicas"], args.replicas or 1))
        if args.replicas:
            autoscaling["initial_replicas"] = args.replicas
    gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if str(args.device).startswith("cuda")
                                                                     else 0.0)
    cpus = args.replica_cpus if args.replica_cpus is not None else float(args.threads or 1)
    serve = attrs.evolve(options, adapters_dir=adapters,
                         allowed_dirs=tuple(os.path.abspath(os.path.expanduser(d)) for d in options.allowed_dirs))
    return RayServeConfig(engine=engine, adapters_dir=adapters, serve=serve, num_replicas=args.replicas or 1,
                          autoscaling=autoscaling or None, max_adapters_per_replica=args.max_adapters_per_replica,
                          num_cpus=cpus, num_gpus=gpus, cache_dir=args.adapters_cache)


def run(args: argparse.Namespace, options) -> int:
    """Deploy the application, serve until Ctrl-C or SIGTERM, then stop it (and a local cluster)."""
    from adaptrix.errors import AdaptrixError
    from adaptrix.serve.http import base_url

    try:
        from ray import serve
    except ImportError as exc:
        raise AdaptrixError(f"adaptrix serve --replicas needs ray[serve] ({exc}); pip install adaptrix-ray") from exc
    from adaptrix_ray.application import build
    from adaptrix_ray.cluster import connect, disconnect

    config = config_of(args, options)
    most = (config.autoscaling or {}).get("max_replicas", config.num_replicas)
    print(f"adaptrix serve: starting {'a local Ray cluster on 127.0.0.1' if not args.ray_address else args.ray_address}"
          f" with {config.num_replicas} replica(s) of {args.model or 'the embedded default model'} ...",
          file=sys.stderr, flush=True)
    local = connect(args.ray_address, num_cpus=max(1.0, most * config.num_cpus),
                    num_gpus=most * config.num_gpus if config.num_gpus else None)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build(config), name=config.app_name, route_prefix="/", blocking=False)
        print(f"adaptrix serve: ready on {base_url(args.host, args.port)} (Ray Serve, {config.num_replicas} "
              "replica(s); Ctrl-C stops)", file=sys.stderr, flush=True)
        while not stop["now"]:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("adaptrix serve: stopping" + (" the local Ray cluster" if local else ""), file=sys.stderr, flush=True)
        disconnect(config.app_name, local)
    return 0


MODE = ServeMode("ray", "Serve on Ray Serve: N engine replicas, adapter-affine routing (adaptrix-ray)",
                 add_arguments, selected, run)
