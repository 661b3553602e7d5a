"""The adapter half of :class:`adaptrix.Engine` (a mixin).

The engine's generation path calls only the underscored methods below; the
public adapter methods (``load_adapter``, ``switch_adapter``, ...) live here
too. This first version has no adapter support: the base model serves every
call. The adapter manager replaces these bodies.
"""

from __future__ import annotations

import contextlib
from typing import Any

#: Sentinel for "the adapter argument was not given": use the active adapter.
UNSET: Any = object()


class AdapterAPI:
    # -- called by the engine ----------------------------------------------
    def _on_model_loaded(self, loaded) -> None:
        """The engine loaded ``loaded`` (a LoadedModel); set up adapter state."""

    def _on_cleanup(self) -> None:
        """The engine is releasing its model."""

    def _generation_model(self):
        """The module to call ``generate``/forward on (base model or PeftModel)."""
        return self._loaded.model

    def _adapter_scope(self, adapter=UNSET):
        """Context manager making ``adapter`` (a name, None for base, UNSET for the active one) active."""
        if adapter not in (UNSET, None):
            from ..errors import AdapterNotFoundError

            raise AdapterNotFoundError(f"adapter {adapter!r} is not loaded (no adapter support yet)")
        return contextlib.nullcontext()

    def _adapter_batch_kwargs(self, adapters: list | None, batch_size: int) -> dict:
        """Extra ``generate`` kwargs that give row i the adapter ``adapters[i]``."""
        if adapters and any(a is not None for a in adapters):
            from ..errors import AdapterNotFoundError

            raise AdapterNotFoundError("mixed-adapter batches need loaded adapters (no adapter support yet)")
        return {}

    def _adapter_task_type(self, adapter=UNSET) -> str | None:
        """The task type declared by the adapter's adaptrix.json, if any."""
        return None

    def _adapters_info(self) -> dict:
        """For ``get_model_info``: adapters loaded and active."""
        return {"adapters_loaded": [], "active_adapter": None}
