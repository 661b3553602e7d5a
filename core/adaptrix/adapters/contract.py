"""What a backend implements for the adapter manager: applying LoRA weights to its model.

:class:`~.manager.AdapterManager` owns what every backend shares (names,
validation, residency, pins, the active set, compositions' rules); a backend's
subclass implements :class:`AdapterBackend`: ``_module_index``, ``_add``,
``_remove`` and ``_apply``, and where it can ``_merge``/``_unmerge`` and
``_compose`` (with the methods it supports in ``COMPOSE_METHODS``). These run
with the manager's lock held, and only after the manager checked their inputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from adaptrix.adapters.info import AdapterInfo
from adaptrix.adapters.validate import ModuleIndex
from adaptrix.errors import BackendError


class AdapterBackend(ABC):
    """The backend half of an adapter manager (see the module docstring)."""

    #: The backend's name, for error messages.
    backend: ClassVar[str] = "?"
    #: Composition methods this backend can express.
    COMPOSE_METHODS: ClassVar[tuple[str, ...]] = ()
    #: Whether ``merge`` is supported.
    CAN_MERGE: ClassVar[bool] = False
    #: The model file adapters files are converted against (a GGUF), when there is one.
    base_file: Path | None = None

    @abstractmethod
    def _module_index(self) -> ModuleIndex:
        """The model's module names and shapes, for validation."""

    @abstractmethod
    def _add(self, info: AdapterInfo, state) -> None:
        """Make a validated adapter's weights resident (``state``: an allowed pickle's tensors, else None).

        On failure, leave the model as it was and raise :class:`AdapterError`.
        """

    @abstractmethod
    def _remove(self, name: str) -> None:
        """Free the weights of ``name`` (already gone from ``_infos``; ``_active`` is reset after)."""

    @abstractmethod
    def _apply(self, target: tuple[str, ...]) -> None:
        """Make exactly ``target`` active (outputs summed); set ``self._active = target``."""

    def _merge(self) -> None:
        """Merge the single active adapter into the weights (only where ``CAN_MERGE``)."""

    def _unmerge(self) -> None:
        """Restore the exact base weights (a no-op where nothing merges)."""

    def _compose(self, sources: list[str], weights: dict[str, float], name: str, method: str,
                 options: dict[str, Any]) -> AdapterInfo:
        """Build adapter ``name`` from the loaded, checked ``sources`` weighted by ``weights``; its info."""
        raise self._unsupported(f"compose adapters with method {method!r}")

    def _check_removable(self, name: str) -> None:
        """Raise :class:`AdapterError` when the backend cannot remove ``name`` now (a backend's own rule)."""

    def _close(self) -> None:
        """Release backend state (the engine is dropping its model)."""

    def _unsupported(self, what: str) -> BackendError:
        return BackendError(
            f"the {self.backend} backend cannot {what}; load the model with backend='transformers' "
            "(CLI: --backend transformers) for every adapter operation"
        )
