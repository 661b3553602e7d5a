"""Connecting to a Ray cluster, or starting a local one bound to the loopback address and stopping it.

A local cluster (``adaptrix serve --replicas N`` without ``--ray-address``) runs every Ray process on node IP
127.0.0.1, without the dashboard, with as many CPUs as the replicas need; ``ray.shutdown()`` at exit stops
all of its processes. An existing cluster (``--ray-address``) is left running; only this application is
deleted from it at exit.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("adaptrix.ray")

#: The node address every local Ray process uses: nothing listens beyond this machine.
LOOPBACK = "127.0.0.1"
#: Ray turns a node IP of 127.0.0.1 into the machine's outward address unless this is "0" (Ray's switch for
#: single-machine clusters); then its processes advertise, and listen on, the loopback address only.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Make Ray keep node IP 127.0.0.1 as given, in this process and the Ray processes it starts."""
    os.environ[SINGLE_MACHINE_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import time; Ray may be imported already


def connect(address: str | None, *, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """``ray.init`` an existing cluster at ``address``, or a new local one; returns whether it is local."""
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        return False
    loopback_only()
    ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, num_cpus=num_cpus,
             num_gpus=num_gpus, logging_level=logging.WARNING, log_to_driver=False)
    return True


def disconnect(app_name: str, local: bool) -> None:
    """Delete the application (existing cluster) or stop Serve and the whole local cluster."""
    import ray
    from ray import serve

    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(app_name)
    except Exception as exc:  # noqa: BLE001 - stop the rest anyway
        log.warning("adaptrix ray: stopping Serve: %s", exc)
    ray.shutdown()
