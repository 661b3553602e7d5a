"""Residency: which loaded adapters stay in memory, under a count and a byte budget, least recently used first.

The adapter manager owns one :class:`Residency`. It records use (:meth:`Residency.touch`) and names the
adapter to evict while the loaded ones exceed a limit (:meth:`Residency.victim`); the manager evicts it
(an evicted adapter is reloaded transparently when asked for again). Adapters in use are never victims:
the manager says which (active, pinned by a running generation or a hold, or compositions, which have no
folder to reload from).
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable, Mapping

from adaptrix.adapters.info import AdapterInfo
from adaptrix.errors import AdapterError


def check_residency_limits(max_loaded_adapters, max_adapter_bytes) -> None:
    """Residency limits are positive whole numbers or None; anything else raises :class:`AdapterError`."""
    for name, value in (("max_loaded_adapters", max_loaded_adapters), ("max_adapter_bytes", max_adapter_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AdapterError(f"{name} must be a positive whole number or None, got {value!r}")


class Residency:
    """The limits (``None``: none) and the order of use of the loaded adapters."""

    def __init__(self, max_loaded_adapters: int | None = None, max_adapter_bytes: int | None = None):
        self.max_loaded_adapters: int | None = None
        self.max_adapter_bytes: int | None = None
        self.configure(max_loaded_adapters, max_adapter_bytes)
        self._lru: collections.OrderedDict[str, None] = collections.OrderedDict()

    def configure(self, max_loaded_adapters: int | None, max_adapter_bytes: int | None) -> None:
        """New limits (checked); the manager then evicts down to them."""
        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        self.max_loaded_adapters, self.max_adapter_bytes = max_loaded_adapters, max_adapter_bytes

    def touch(self, names: Iterable[str]) -> None:
        """``names`` were just used: the most recently used now, in this order."""
        for n in names:
            if n in self._lru:
                self._lru.move_to_end(n)
            else:
                self._lru[n] = None

    def forget(self, name: str) -> None:
        """``name`` is no longer loaded."""
        self._lru.pop(name, None)

    def over(self, loaded: Mapping[str, AdapterInfo]) -> bool:
        """Whether the ``loaded`` adapters exceed a limit."""
        if self.max_loaded_adapters is not None and len(loaded) > self.max_loaded_adapters:
            return True
        if self.max_adapter_bytes is not None:
            return sum(i.tensor_bytes or 0 for i in loaded.values()) > self.max_adapter_bytes
        return False

    def victim(self, loaded: Mapping[str, AdapterInfo], in_use: Callable[[str], bool]) -> str | None:
        """The least recently used adapter not ``in_use`` to evict while ``loaded`` exceeds a limit;
        ``None`` within the limits, or when everything left is in use (it then stays over budget rather
        than fail)."""
        if not self.over(loaded):
            return None
        return next((n for n in self._lru if not in_use(n)), None)
