"""The adapter half of :class:`adaptrix.Engine` (a mixin).

The engine calls only the underscored methods; the public adapter methods
(``load_adapter``, ``switch_adapter``, ...) delegate to an
:class:`~.manager.AdapterManager` built when the model is loaded. The engine
provides ``self._loaded``, ``self._lock`` (an RLock held during generation)
and ``self.adapters_dir``; optional attributes ``max_loaded_adapters``,
``max_adapter_bytes`` and ``merge_adapters`` configure the manager (or call
:meth:`AdapterAPI.configure_adapters`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from ..types import UNSET

__all__ = ["UNSET", "AdapterAPI"]


class AdapterAPI:
    _adapter_manager = None

    # -- called by the engine ----------------------------------------------
    def _on_model_loaded(self, loaded) -> None:
        """The engine loaded ``loaded`` (a LoadedModel); set up adapter state."""
        from .manager import AdapterManager

        self._adapter_manager = AdapterManager(
            loaded,
            getattr(self, "adapters_dir", "adapters"),
            max_loaded_adapters=getattr(self, "max_loaded_adapters", None),
            max_adapter_bytes=getattr(self, "max_adapter_bytes", None),
            merge=bool(getattr(self, "merge_adapters", False)),
            lock=getattr(self, "_lock", None),
        )

    def _on_cleanup(self) -> None:
        """The engine is releasing its model."""
        if self._adapter_manager is not None:
            self._adapter_manager.close()
        self._adapter_manager = None

    def _generation_model(self):
        """The module to call ``generate``/forward on (base model or PeftModel)."""
        if self._adapter_manager is None:
            return self._loaded.model
        return self._adapter_manager.generation_model()

    def _adapter_scope(self, adapter=UNSET):
        """Context manager making ``adapter`` (a name, None for base, UNSET for the active one) active."""
        if self._adapter_manager is None:
            if adapter is UNSET or adapter is None:
                return contextlib.nullcontext()
            raise self._not_ready(f"use adapter {adapter!r}")
        return self._adapter_manager.scope(adapter)

    def _adapter_batch_kwargs(self, adapters: list | None, batch_size: int) -> dict:
        """Extra ``generate`` kwargs that give row i the adapter ``adapters[i]``."""
        if self._adapter_manager is None:
            if adapters and any(a is not None for a in adapters):
                raise self._not_ready("serve a mixed-adapter batch")
            return {}
        return self._adapter_manager.batch_kwargs(adapters, batch_size)

    def _adapter_batch_done(self) -> None:
        """A batch finished: adapters it kept resident beyond the budget may go."""
        if self._adapter_manager is not None:
            self._adapter_manager.settle()

    def _adapter_task_type(self, adapter=UNSET) -> str | None:
        """The task preset declared by the adapter's adaptrix.json, if it names one.

        A task type adaptrix has no preset for (an adapter's own label such as
        "style") selects nothing rather than failing the generation.
        """
        m = self._adapter_manager
        if m is None or adapter is None:
            return None
        if adapter is UNSET:
            adapter = m.active
            if not isinstance(adapter, str):
                return None
        from ..generation_defaults import TASK_PRESETS

        try:
            task = m.info(adapter).task_type
        except Exception:
            return None
        return task if task in TASK_PRESETS else None

    def _adapters_info(self) -> dict:
        """For ``get_model_info``: adapters loaded and active."""
        if self._adapter_manager is None:
            return {"adapters_loaded": [], "active_adapter": None}
        return self._adapter_manager.status()

    # -- public API ----------------------------------------------------------
    @property
    def adapters(self):
        """The :class:`~.manager.AdapterManager` (after ``initialize()``)."""
        return self._manager("use adapters")

    def load_adapter(
        self, name_or_path: str | Path, *, name: str | None = None, allow_pickle: bool = False, activate: bool = True
    ) -> bool:
        """Validate then load an adapter (name in adapters_dir, folder, or Hub id); make it active by default.

        Returns ``True``; ``engine.adapters.info(name)`` describes it. Raises
        :class:`~adaptrix.errors.AdapterIncompatibleError` (``.report``) when
        validation fails; the engine is then unchanged.
        """
        self._manager("load an adapter").load(name_or_path, name=name, allow_pickle=allow_pickle, activate=activate)
        return True

    def unload_adapter(self, name: str) -> bool:
        """Remove a loaded adapter; when it was active, the rest (or the base) stays active. Returns ``True``."""
        self._manager("unload an adapter").unload(name)
        return True

    def switch_adapter(self, name: str | Sequence[str] | None, *, merge: bool | None = None) -> bool:
        """Make ``name`` active (None: base model; a list: several summed); loads it when needed. Returns ``True``."""
        self._manager("switch adapters").switch(name, merge=merge)
        return True

    def list_adapters(self) -> list[dict[str, Any]]:
        """Available, loaded and evicted adapters, with ``active`` marked."""
        if self._adapter_manager is None:
            from .sources import available_adapters

            return [
                {"name": n, "path": str(p), "loaded": False, "state": "available", "active": False, "merged": False}
                for n, p in available_adapters(getattr(self, "adapters_dir", None)).items()
            ]
        return self._adapter_manager.list()

    @property
    def active_adapter(self) -> str | tuple[str, ...] | None:
        """The active adapter name, a tuple when several are active, None for the base model."""
        return None if self._adapter_manager is None else self._adapter_manager.active

    def validate_adapter(self, name_or_path: str | Path, *, allow_pickle: bool = False):
        """A :class:`~.validate.CompatibilityReport` for the loaded model; loads no weights."""
        return self._manager("validate an adapter").validate(name_or_path, allow_pickle=allow_pickle)

    def compose_adapters(
        self,
        weights: dict[str, float],
        name: str,
        method: str = "linear",
        *,
        density: float | None = None,
        svd_rank: int | None = None,
        activate: bool = False,
    ):
        """Create adapter ``name`` from ``{adapter: weight}`` with peft's add_weighted_adapter ``method``."""
        return self._manager("compose adapters").compose(
            weights, name, method, density=density, svd_rank=svd_rank, activate=activate
        )

    def merge_adapter(self) -> None:
        """Merge the active adapter into the weights (base speed); undone before any switch."""
        self._manager("merge an adapter").merge()

    def unmerge_adapter(self) -> None:
        """Restore the exact base weights; the adapter stays active, unmerged."""
        self._manager("unmerge an adapter").unmerge()

    def configure_adapters(
        self, *, max_loaded_adapters: int | None = None, max_adapter_bytes: int | None = None, merge: bool | None = None
    ) -> None:
        """Residency limits (LRU) and merge mode; applies now and to later models."""
        from .manager import check_residency_limits

        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        self.max_loaded_adapters = max_loaded_adapters
        self.max_adapter_bytes = max_adapter_bytes
        if merge is not None:
            self.merge_adapters = merge
        m = self._adapter_manager
        if m is not None:
            with m._lock:
                m.max_loaded_adapters, m.max_adapter_bytes = max_loaded_adapters, max_adapter_bytes
                if merge is not None:
                    m.merge_mode = merge
                    if not merge:
                        m._unmerge()
                m._make_room()

    # -- helpers ---------------------------------------------------------------
    def _manager(self, what: str):
        if self._adapter_manager is None:
            raise self._not_ready(what)
        return self._adapter_manager

    @staticmethod
    def _not_ready(what: str):
        from ..errors import EngineStateError

        return EngineStateError(f"cannot {what}: the engine has no model; call initialize() first")
