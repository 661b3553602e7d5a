"""Choosing the backend that runs a model source (``Engine(backend=...)``, ``--backend``).

- a name picks that backend; it must be installed and able to run the source,
  or the error says what to install or use instead;
- ``auto`` takes, among the installed backends that prefer the source (a GGUF
  file for llama.cpp), the one with the highest ``priority``; when none
  does, the reference backend. :class:`Choice` says which and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from adaptrix.backends.contract import AUTO, REFERENCE, Backend
from adaptrix.backends.transformers.runner import TransformersBackend
from adaptrix.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.plugins.host import PluginHost


@attrs.frozen
class BackendRecord:
    """One backend as ``adaptrix plugins list`` shows it."""

    name: str
    plugin: str
    summary: str
    status: str  # "ok", "missing" (a dependency is not installed), "shadowed" (the name is taken)
    error: str | None = None
    backend: Backend | None = attrs.field(default=None, eq=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "backend"}


@attrs.frozen
class Choice:
    """Which backend runs a model, and why."""

    name: str
    reason: str
    backend: Backend = attrs.field(eq=False, repr=False)


def backend_records(host: "PluginHost") -> list[BackendRecord]:
    """The reference backend, then every plugin's, in the host's order; duplicates marked ``shadowed``."""
    found: list[tuple[str, Backend]] = [("adaptrix", TransformersBackend())]
    for plugin, items in host.call_all("backends"):
        for item in items or ():
            found.append((plugin, item() if isinstance(item, type) else item))
    records: list[BackendRecord] = []
    taken: dict[str, str] = {}
    for plugin, backend in found:
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name or not isinstance(backend, Backend):
            raise BackendError(
                f"plugin {plugin!r} returned {backend!r} from its backends hook; return adaptrix.backends.contract.Backend "
                "instances (or classes) with a non-empty name"
            )
        if name in taken:
            records.append(BackendRecord(name, plugin, backend.summary, "shadowed",
                                         f"backend name {name!r} is already provided by {taken[name]!r}", backend))
            continue
        taken[name] = plugin
        missing = backend.missing()
        records.append(BackendRecord(name, plugin, backend.summary, "missing" if missing else "ok", missing, backend))
    return records


def choose_backend(source, requested: str | None, host: "PluginHost") -> Choice:
    """Pick the backend for ``source``: a named one, or ``auto`` (see the module docstring)."""
    requested = (requested or AUTO).strip().lower()
    records = [r for r in backend_records(host) if r.status != "shadowed"]
    by_name = {r.name: r for r in records}
    if requested != AUTO:
        record = by_name.get(requested)
        if record is None:
            names = ", ".join([AUTO, *by_name])
            raise BackendError(
                f"backend {requested!r} is not installed; installed backends: {names}"
                + _install_hint(requested)
            )
        if record.status != "ok":
            raise BackendError(f"backend {requested!r} cannot run here: {record.error}")
        why_not = record.backend.refuses(source)
        if why_not:
            raise BackendError(f"backend {requested!r} cannot run {_name(source)}: {why_not}")
        return Choice(requested, "asked for", record.backend)
    usable = [r for r in records if r.status == "ok" and not r.backend.refuses(source)]
    preferring = sorted((r for r in usable if r.backend.prefers(source)), key=lambda r: -r.backend.priority)
    if preferring:
        best = preferring[0]
        return Choice(best.name, f"auto: the {best.name} backend is installed and prefers this source", best.backend)
    reference = by_name[REFERENCE]
    others = [r.name for r in records if r.name != REFERENCE]
    reason = "auto: the reference backend" + (
        f" (no other installed backend prefers this source: {', '.join(others)})" if others else
        " (no other backend installed)"
    )
    return Choice(REFERENCE, reason, reference.backend)


def _name(source) -> str:
    return str(getattr(source, "model_id", source))


def _install_hint(name: str) -> str:
    return f"; pip install adaptrix-{name}?" if name.isidentifier() else ""
