"""Make an importable "installed" distribution on the fly, for plugin tests.

Writes module files plus a ``<name>.dist-info`` folder with ``METADATA`` and
``entry_points.txt`` into a directory that the test puts on ``sys.path`` (or
``PYTHONPATH`` for a subprocess): exactly what ``pip install`` leaves behind.
"""

from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path


def make_dist(
    root: Path,
    name: str,
    entry_points: dict[str, str],
    modules: dict[str, str] | None = None,
    version: str = "1.0.0",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for mod, source in (modules or {}).items():
        (root / f"{mod}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    eps = "[adaptrix]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    return root


def entry_points_under(root: Path) -> list[metadata.EntryPoint]:
    """The ``adaptrix`` entry points of the distributions in ``root`` only."""
    eps = []
    for dist in metadata.distributions(path=[str(root)]):
        eps += [ep for ep in dist.entry_points if ep.group == "adaptrix"]
    return eps
