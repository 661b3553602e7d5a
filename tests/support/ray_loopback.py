"""``python -m support.ray_loopback start ...``: ``ray start`` that keeps a node IP of 127.0.0.1 as given.

Ray rewrites 127.0.0.1 (as ``--node-ip-address`` and in ``--address``) into the machine's outward address so
that other machines could reach the node; with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` it keeps it, but then
refuses to start a second node. A two-node cluster that never leaves the loopback address needs both: the
head starts with that variable set to 0, and worker nodes start through this wrapper, which turns the
rewriting off in this process only (the node's processes get the address on their command lines).
"""

from __future__ import annotations

import sys

from ray._private import services
from ray.scripts import scripts


def _keep(host: str) -> str:
    return host


if __name__ == "__main__":
    services.resolve_ip_for_localhost = _keep
    sys.argv[0] = "ray"
    sys.exit(scripts.main())
