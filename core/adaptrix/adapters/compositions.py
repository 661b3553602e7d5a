"""Compositions built on demand (a server request's ``adapters``), cached and bounded, and holds on adapters.

The adapter manager owns one :class:`CompositionCache`: the composition for
some weights is built once, reused while it stays cached, and past
:data:`MAX_COMPOSITIONS` the least recently used one nobody holds is unloaded,
so clients sending ever new weights cannot fill the memory. An
:class:`AdapterHold` keeps an adapter (or a cached composition) out of eviction
and unloading while a request uses it.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from typing import Any, Callable, Iterable, Protocol

log = logging.getLogger("adaptrix.adapters")

#: Compositions kept built; past this many the least recently used one no request holds is unloaded.
MAX_COMPOSITIONS = 8
#: How cached compositions combine their parts (every backend that composes can concatenate).
METHOD = "cat"

Weights = tuple[tuple[str, float], ...]


class Composer(Protocol):
    """What the cache needs of its adapter manager (:class:`~.manager.AdapterManager`)."""

    def compose(self, weights: dict[str, float], name: str, method: str = ...) -> Any: ...
    def unload(self, name: str) -> None: ...
    def is_pinned(self, name: str) -> bool: ...
    def loaded_names(self) -> list[str]: ...


def composition_name(weights: Iterable[tuple[str, float]]) -> str:
    """The adapter name of the cached composition of ``weights`` (``(adapter, weight)`` pairs, in order)."""
    return "composed-" + hashlib.sha1(repr(_key(weights)).encode()).hexdigest()[:12]


def _key(weights: Iterable[tuple[str, float]]) -> Weights:
    return tuple((str(a), float(w)) for a, w in weights)


class AdapterHold:
    """An adapter kept out of eviction and unloading until :meth:`release` (idempotent; a context manager)."""

    def __init__(self, name: str | None, release: Callable[[], None]):
        #: The adapter's name (a cached composition's generated name), ``None`` for the base model.
        self.name = name
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def __enter__(self) -> "AdapterHold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class CompositionCache:
    """The manager's compositions built for weights, least recently used first (call with its lock held)."""

    def __init__(self, manager: Composer):
        self._manager = manager
        self._built: collections.OrderedDict[Weights, str] = collections.OrderedDict()

    def names(self) -> list[str]:
        return list(self._built.values())

    def get(self, weights: Weights) -> str:
        """The composition of ``weights``, built (method :data:`METHOD`) or reused; most recently used now."""
        key = _key(weights)
        name = self._built.get(key)
        if name is None:
            name = composition_name(key)
            self._manager.compose(dict(key), name, method=METHOD)
            self._built[key] = name
        self._built.move_to_end(key)
        return name

    def trim(self) -> None:
        """Unload the least recently used past :data:`MAX_COMPOSITIONS`, skipping held ones and the newest."""
        for key, name in list(self._built.items()):
            if len(self._built) <= MAX_COMPOSITIONS:
                return
            if self._manager.is_pinned(name) or key == next(reversed(self._built)):
                continue
            del self._built[key]
            try:
                self._manager.unload(name)
            except Exception as exc:  # keep serving: the composition's memory stays taken, say so
                log.warning("could not unload composition %s: %s", name, exc)

    def forget(self, source: str) -> list[str]:
        """Unload the compositions built from ``source`` (it is being unloaded or replaced); their names."""
        stale = [(k, n) for k, n in self._built.items() if any(a == source for a, _ in k)]
        for key, name in stale:
            del self._built[key]
            if name in self._manager.loaded_names():
                self._manager.unload(name)
        return [n for _, n in stale]

    def discard(self, name: str) -> None:
        """Forget ``name`` if it is a cached composition (it was unloaded directly)."""
        for key, n in list(self._built.items()):
            if n == name:
                del self._built[key]
