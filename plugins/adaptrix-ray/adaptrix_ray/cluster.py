"""Connecting to a Ray cluster, or starting a local one bound to the loopback address and stopping it.

A local cluster (``adaptrix serve --replicas N`` without ``--ray-address``) runs every Ray process on node IP
127.0.0.1, without the dashboard, with as many CPUs as the replicas need; ``ray.shutdown()`` at exit stops
all of its processes. An existing cluster (``--ray-address``) is left running; only this application is
deleted from it at exit.
"""

from __future__ import annotations

import logging

log = logging.getLogger("adaptrix.ray")

#: The node address every local Ray process uses: nothing listens beyond this machine.
LOOPBACK = "127.0.0.1"


def connect(address: str | None, *, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """``ray.init`` an existing cluster at ``address``, or a new local one; returns whether it is local."""
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        return False
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
