"""Pins: how many holders keep each adapter resident.

A holder is anything that needs an adapter's weights to stay loaded for a
while: a generation's scope, a server's running row, a llama.cpp composition
(its sources). :class:`Pins` counts holders per name, never weights or other
numbers: :meth:`Pins.hold` adds exactly one per name it is given (a mapping
gives its keys), :meth:`Pins.release` takes one away and refuses to go below
zero, so every hold is undone by exactly one release and an adapter no holder
uses again is unpinned (evictable, unloadable).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from adaptrix.errors import EngineStateError


class Pins:
    """Holder counts per adapter name (the one owner of pin counting; see the module docstring)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __getitem__(self, name: str) -> int:
        """How many holders ``name`` has (0 when none)."""
        return self._counts.get(name, 0)

    def hold(self, names: Iterable[str]) -> list[str]:
        """One more holder for each of ``names`` (a mapping counts its keys); returns the names, for :meth:`release`."""
        names = _names(names)
        for name in names:
            self._counts[name] = self._counts.get(name, 0) + 1
        return names

    def release(self, names: Iterable[str]) -> None:
        """One holder fewer for each of ``names``; all or nothing."""
        names = _names(names)
        after = dict(self._counts)
        for name in names:
            left = after.get(name, 0) - 1
            if left < 0:
                raise EngineStateError(
                    f"adapter {name!r} was released more often than it was held (pins {self._counts}); this is a "
                    "bug in adaptrix, please report it"
                )
            after[name] = left
        self._counts = {name: count for name, count in after.items() if count}

    @contextlib.contextmanager
    def holding(self, names: Iterable[str]) -> Iterator[list[str]]:
        """Hold ``names`` for the body."""
        held = self.hold(names)
        try:
            yield held
        finally:
            self.release(held)

    def __repr__(self) -> str:
        return f"Pins({self._counts})"


def _names(names: Iterable[str]) -> list[str]:
    out = list(names)  # a mapping (a composition's weights) gives its keys
    for name in out:
        if not isinstance(name, str):
            raise TypeError(f"pins count adapters by name, got {name!r} in {out!r}")
    return out
