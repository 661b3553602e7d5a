"""``/metrics`` of a Ray deployment: every replica's adaptrix metrics, labelled ``replica``, merged at the ingress.

Each replica keeps its own :class:`~adaptrix.serve.metrics.Metrics` (its scheduler counts requests, tokens,
time to first token, adapters resident...). The ingress asks each running replica for its text and serves
one exposition: the same metric names as one process, each sample with a ``replica`` label, and the
ingress's own samples (adapter loads and validation failures through ``/v1/load_lora_adapter``) labelled
``replica="ingress"``. Prometheus scrapes one target; ``sum by (adapter)`` gives the cluster's totals. Ray's
own metrics (``ray_serve_*``: replica queue lengths, multiplexed model loads) stay on Ray's metrics export
port, as Ray users expect.
"""

from __future__ import annotations


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labelled(line: str, replica: str) -> str:
    """A sample line with ``replica="..."`` added to its labels."""
    label = f'replica="{_escape(replica)}"'
    name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
    if line[name_end:name_end + 1] == "{":
        close = line.index("}", name_end)
        inner = line[name_end + 1:close]
        return f"{line[:name_end]}{{{inner + ',' if inner else ''}{label}}}{line[close + 1:]}"
    return f"{line[:name_end]}{{{label}}}{line[name_end:]}"


def merge_metrics(own: str, parts: list[tuple[str, str]]) -> str:
    """One Prometheus text exposition from the ingress's ``own`` and ``[(replica id, text), ...]``: each
    metric's ``# HELP``/``# TYPE`` once, then its samples from every source, each labelled with its source."""
    blocks: dict[str, list[str]] = {}
    for replica, text in [("ingress", own), *parts]:
        current = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# "):
                fields = line.split(" ", 3)
                if len(fields) >= 3 and fields[1] in ("HELP", "TYPE"):
                    current = fields[2]
                    block = blocks.setdefault(current, [])
                    if line not in block:
                        block.append(line)
                continue
            if current is not None:
                blocks[current].append(_labelled(line, replica))
    return "".join(line + "\n" for block in blocks.values() for line in block)
