"""The adapter manager: names, residency, validation and activation of LoRA adapters, whatever the backend.

One owner for what every backend shares:

- names: a bare name resolves inside ``adapters_dir``, a folder or Hub id
  elsewhere (see :mod:`.sources`); a name in use is never silently reused;
- validation before any weight is read (see :mod:`.validate`), against the
  backend's own module shapes; a failed load leaves the model as it was;
- LRU residency (count and byte budget) with transparent reload, and pins:
  an adapter a generation is using is never evicted or unloaded (a server's
  request holds its adapter through :meth:`AdapterManager.hold`);
- an atomic :meth:`AdapterManager.replace` (the old adapter keeps serving when
  the new one fails), and the cache of compositions built for weights
  (:mod:`.compositions`);
- the active set, per-call scopes, the rows of a mixed batch, and the checks
  of a composition.

Applying weights is a backend's job, in a subclass:
:class:`~.peft_manager.PeftAdapterManager` (transformers + peft: merging, every
composition method, mixed-adapter batches) in the core, others in backend
plugins. A subclass implements ``_module_index``, ``_add``, ``_remove`` and
``_apply``, and where it can ``_merge``/``_unmerge`` and ``_compose`` (with the
methods it supports in ``COMPOSE_METHODS``).

All public methods hold ``lock`` (the engine passes its model lease).
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

import attrs

from adaptrix.errors import (
    AdapterError,
    AdapterFormatError,
    AdapterIncompatibleError,
    AdapterNotFoundError,
    AdapterPickleError,
    BackendError,
)
from adaptrix.types import UNSET
from adaptrix.adapters.convert import imported_folder
from adaptrix.adapters.compositions import AdapterHold, CompositionCache
from adaptrix.adapters.info import AdapterInfo, TensorSpec, load_pickle_state, read_adapter_info
from adaptrix.adapters.pins import Pins
from adaptrix.adapters.sources import available_adapters, is_bare_name, resolve_adapter
from adaptrix.adapters.validate import CompatibilityReport, ModuleIndex, validate

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.types import Hooks

#: The row name of the base model in a mixed batch.
BASE = "__base__"
#: Every composition method adaptrix knows (peft's ``add_weighted_adapter`` combination types).
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
_SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


@attrs.frozen
class Replacement:
    """What :meth:`AdapterManager.replace` did: the adapter now loaded, its validation report (warnings), and
    whether an adapter of that name (loaded or evicted) was replaced."""

    info: AdapterInfo
    report: CompatibilityReport
    replaced: bool


class AdapterManager(ABC):
    """LoRA adapters on one loaded model (an :class:`~adaptrix.types.LoadedModel`).

    ``max_loaded_adapters`` / ``max_adapter_bytes`` bound residency (LRU);
    ``merge=True`` keeps a single active adapter merged into the weights
    (backends that can merge).
    """

    #: The backend's name, for error messages.
    backend: ClassVar[str] = "?"
    #: Composition methods this backend can express.
    COMPOSE_METHODS: ClassVar[tuple[str, ...]] = ()
    #: Whether ``merge`` is supported.
    CAN_MERGE: ClassVar[bool] = False
    #: The model file adapters files are converted against (a GGUF), when there is one.
    base_file: Path | None = None

    def __init__(
        self,
        loaded,
        adapters_dir: str | Path | None = "adapters",
        *,
        max_loaded_adapters: int | None = None,
        max_adapter_bytes: int | None = None,
        merge: bool = False,
        lock=None,
        host: "Hooks | None" = None,
    ):
        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        self.loaded = loaded
        #: The engine's plugin host: names an adapter's base family and converts adapter files (GGUF LoRA).
        self.host = host
        self.adapters_dir = adapters_dir
        self.max_loaded_adapters = max_loaded_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.merge_mode = merge
        self._lock = lock if lock is not None else threading.RLock()
        self._infos: dict[str, AdapterInfo] = {}  # loaded adapters
        self._known: dict[str, tuple[Path, bool]] = {}  # evicted, reloadable: name -> (folder, allow_pickle)
        self._lru: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._active: tuple[str, ...] = ()
        self._merged: tuple[str, ...] = ()
        #: Holders per adapter (scopes, running rows, a backend's compositions): pinned ones are never evicted.
        self._pinned = Pins()
        self._index: ModuleIndex | None = None
        self._compositions = CompositionCache(self)

    def _host_for(self, file: Path) -> "Hooks":
        """The plugin host that converts ``file``; a manager built without one cannot."""
        if self.host is None:
            raise AdapterError(
                f"cannot load the adapter file {file}: this adapter manager was built without a plugin host, "
                "which converts adapter files; load it through an Engine, or convert it first "
                "(adaptrix adapters convert)"
            )
        return self.host

    # -- what a backend implements -------------------------------------------
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
        raise self._unsupported(f"compose adapters with method {method!r}")

    def _close(self) -> None:
        """Release backend state (the engine is dropping its model)."""

    # -- queries -----------------------------------------------------------
    @property
    def index(self) -> ModuleIndex:
        if self._index is None:
            self._index = self._module_index()
        return self._index

    @property
    def active(self) -> str | tuple[str, ...] | None:
        """``None`` (base), one name, or a tuple of names active together."""
        if not self._active:
            return None
        return self._active[0] if len(self._active) == 1 else self._active

    @property
    def merged(self) -> tuple[str, ...]:
        return self._merged

    def loaded_names(self) -> list[str]:
        return list(self._infos)

    def is_pinned(self, name: str) -> bool:
        """Whether a generation or a hold is using ``name`` (it is then never evicted or unloaded)."""
        return self._pinned[name] > 0

    def info(self, name: str) -> AdapterInfo:
        if name in self._infos:
            return self._infos[name]
        _, folder = resolve_adapter(name, self.adapters_dir)
        return read_adapter_info(folder, name, host=self.host)

    def list(self) -> list[dict[str, Any]]:
        """Available (in adapters_dir), loaded and evicted adapters, the active ones marked."""
        with self._lock:
            rows: dict[str, dict[str, Any]] = {}
            for name, folder in available_adapters(self.adapters_dir).items():
                rows[name] = {"name": name, "path": str(folder), "loaded": False, "state": "available"}
            for name, (folder, _) in self._known.items():
                rows[name] = {"name": name, "path": str(folder), "loaded": False, "state": "evicted"}
            for name, info in self._infos.items():
                rows[name] = {
                    "name": name, "path": info.path, "loaded": True, "state": "loaded",
                    "rank": info.rank, "base_model": info.base_model, "family": info.base_family,
                    "bytes": info.tensor_bytes, "task_type": info.task_type,
                }
            for name, row in rows.items():
                row["active"] = name in self._active
                row["merged"] = name in self._merged
            return sorted(rows.values(), key=lambda r: r["name"])

    def status(self) -> dict[str, Any]:
        return {
            "adapters_loaded": list(self._infos),
            "active_adapter": self.active,
            "merged": list(self._merged),
            "adapter_bytes": sum(i.tensor_bytes or 0 for i in self._infos.values()),
        }

    # -- validation ----------------------------------------------------------
    def validate(self, name_or_path: str | Path, *, allow_pickle: bool = False) -> CompatibilityReport:
        """Check an adapter against this model; no weight is loaded (pickles: only if allowed)."""
        name, folder = resolve_adapter(name_or_path, self.adapters_dir)
        try:
            info = read_adapter_info(folder, name, host=self.host)
            return self._validate(info, allow_pickle)[0]
        except AdapterFormatError as exc:
            return CompatibilityReport(adapter=name, model=self.loaded.model_id, errors=(str(exc),))

    def _validate(self, info: AdapterInfo, allow_pickle: bool):
        state = None
        tensors = None
        if info.weights_format == "pickle" and allow_pickle:
            state = load_pickle_state(Path(info.weights_file), info.name)
            tensors = [TensorSpec(k, str(v.dtype), tuple(v.shape)) for k, v in state.items()]
        report = validate(
            info, self.index, model_family=self.loaded.family, model_id=self.loaded.model_id,
            allow_pickle=allow_pickle, tensors=tensors, state=state,
        )
        return report, state

    # -- load / unload ---------------------------------------------------------
    def load(
        self, name_or_path: str | Path, *, name: str | None = None, allow_pickle: bool = False, activate: bool = True
    ) -> AdapterInfo:
        """Validate, then load an adapter; on error nothing changes. Returns its :class:`AdapterInfo`."""
        with self._lock:
            if str(name_or_path) in self._known and name in (None, str(name_or_path)):  # evicted: reload it
                name = str(name_or_path)
                folder, allow_pickle = self._known[name]
                found = name, folder
            elif Path(str(name_or_path)).expanduser().is_file():  # a converted adapter file (GGUF LoRA, ...)
                file = Path(str(name_or_path)).expanduser()
                found = file.stem, imported_folder(file, base=self.base_file, host=self._host_for(file))
            else:
                found = resolve_adapter(name_or_path, self.adapters_dir)
            name = name or found[0]
            folder = Path(found[1])
            if name in self._infos:
                if Path(self._infos[name].path).resolve() != folder.resolve():
                    raise AdapterError(
                        f"adapter name {name!r} is already used by {self._infos[name].path}; unload it first or "
                        f"pass name= to load {folder} under another name"
                    )
                self._touch([name])
                if activate:
                    self.switch(name)
                return self._infos[name]
            info = read_adapter_info(folder, name, host=self.host)
            report, state = self._checked(info, allow_pickle)
            self._unmerge()
            self._add(info, state)
            self._known.pop(name, None)
            self._infos[name] = info
            self._touch([name])
            self._apply(self._active)
            if activate:
                self.switch(name)
            self._make_room()
            return info

    def _checked(self, info: AdapterInfo, allow_pickle: bool):
        """``(report, state)`` of a valid adapter; raises :class:`AdapterPickleError` for a pickle not allowed,
        :class:`AdapterIncompatibleError` (with the report) for any other error."""
        report, state = self._validate(info, allow_pickle)
        if not report.ok:
            error = AdapterPickleError if info.weights_format == "pickle" and not allow_pickle else \
                AdapterIncompatibleError
            raise error(report.message(), report)
        return report, state

    def replace(self, name: str, folder: str | Path, *, allow_pickle: bool = False) -> Replacement:
        """Load the adapter in ``folder`` as ``name``, in place of the adapter of that name if there is one.

        Atomic: the new adapter is read and validated first, and if anything fails the old one stays loaded
        (or evicted and reloadable) and serving, and the error is raised (:class:`AdapterPickleError`,
        :class:`AdapterIncompatibleError` with its report, or the backend's). Cached compositions built from
        the old adapter are unloaded (they would keep its weights); they are built anew when asked for.
        """
        folder = Path(folder).expanduser()
        with self._lock:
            try:
                info = read_adapter_info(folder, name, host=self.host)
            except AdapterFormatError as exc:
                report = CompatibilityReport(adapter=name, model=self.loaded.model_id, errors=(str(exc),))
                raise AdapterIncompatibleError(report.message(), report) from None
            report, state = self._checked(info, allow_pickle)
            old, evicted = self._infos.get(name), self._known.get(name)
            if old is not None:
                if old.composed:
                    raise AdapterError(f"adapter {name!r} is a composition ({old.path}); unload it first, then load "
                                       f"{folder} under that name")
                self._check_removable(name)
                if self._pinned[name]:
                    raise AdapterError(f"adapter {name!r} is in use by a running generation; replace it afterwards")
                old_state = load_pickle_state(Path(old.weights_file), name) if old.weights_format == "pickle" \
                    else None
            self._compositions.forget(name)
            was_active = name in self._active
            if old is not None:
                self._drop(name)
            self._unmerge()
            try:
                self._add(info, state)
            except BaseException:
                if old is not None:  # put the old one back, as it was
                    self._add(old, old_state)
                    self._infos[name] = old
                    self._touch([name])
                    self._apply(self._active + (name,) if was_active else self._active)
                raise
            self._known.pop(name, None)
            self._infos[name] = info
            self._touch([name])
            self._apply(self._active + (name,) if was_active else self._active)
            self._make_room()
            return Replacement(info, report, replaced=old is not None or evicted is not None)

    def _check_removable(self, name: str) -> None:
        """Raise :class:`AdapterError` when the backend cannot remove ``name`` now (a backend's own rule)."""

    def unload(self, name: str) -> None:
        """Remove an adapter from memory (and forget it for transparent reload).

        Cached compositions built from it (:meth:`hold` with weights) are unloaded with it.
        """
        with self._lock:
            self._compositions.forget(name)
            self._check_removable(name)
            if name not in self._infos:
                if self._known.pop(name, None) is not None:
                    return
                raise AdapterNotFoundError(
                    f"adapter {name!r} is not loaded; loaded: {', '.join(self._infos) or '(none)'}"
                )
            if self._pinned[name]:
                raise AdapterError(f"adapter {name!r} is in use by a running generation; unload it afterwards")
            self._compositions.discard(name)
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._unmerge()
        remaining = tuple(a for a in self._active if a != name)
        del self._infos[name]
        self._lru.pop(name, None)
        self._remove(name)
        self._active = ()
        self._apply(remaining)

    def _touch(self, names: Iterable[str]) -> None:
        for n in names:
            if n in self._lru:
                self._lru.move_to_end(n)
            else:
                self._lru[n] = None

    def _make_room(self) -> None:
        def over() -> bool:
            if self.max_loaded_adapters is not None and len(self._infos) > self.max_loaded_adapters:
                return True
            if self.max_adapter_bytes is not None:
                return sum(i.tensor_bytes or 0 for i in self._infos.values()) > self.max_adapter_bytes
            return False

        while over():
            victim = next(
                (n for n in self._lru if n not in self._active and not self._pinned[n]
                 and not self._infos[n].composed),
                None,
            )
            if victim is None:
                return  # everything left is in use; stay over budget rather than fail
            folder = Path(self._infos[victim].path)
            pickled = self._infos[victim].weights_format == "pickle"
            self._drop(victim)
            self._known[victim] = (folder, pickled)

    def settle(self) -> None:
        """Evict down to the residency budget again (a mixed batch may exceed it while it runs)."""
        with self._lock:
            self._make_room()

    def ensure_loaded(self, names: Iterable[str]) -> tuple[str, ...]:
        """Load (or transparently reload) adapters asked for by name or path; their names, in order.

        A path (``examples/adapters/math``) is loaded under its folder's name,
        which is what is returned for it.
        """
        resolved: list[str] = []
        with contextlib.ExitStack() as pins:  # loading a later one must not evict an earlier one
            for n in names:
                if n not in self._infos:
                    n = self.load(n, activate=False).name
                resolved.append(n)
                pins.enter_context(self._pin([n]))
        return tuple(resolved)

    def configure(
        self, *, max_loaded_adapters: int | None = None, max_adapter_bytes: int | None = None, merge: bool | None = None
    ) -> None:
        """New residency limits (evicting down to them) and, when given, merge mode."""
        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        if merge and not self.CAN_MERGE:
            raise self._unsupported("merge adapters")
        with self._lock:
            self.max_loaded_adapters, self.max_adapter_bytes = max_loaded_adapters, max_adapter_bytes
            if merge is not None:
                self.merge_mode = merge
                if not merge:
                    self._unmerge()
            self._make_room()

    # -- switching ------------------------------------------------------------
    def switch(self, names: str | Sequence[str] | None, *, merge: bool | None = None) -> None:
        """Make ``names`` active (None: base model only; several: their outputs are summed)."""
        with self._lock:
            target = _as_tuple(names)
            if merge and not self.CAN_MERGE:
                raise self._unsupported("merge adapters")
            if any(n not in self._infos for n in target):
                with self._pin(target):
                    target = self.ensure_loaded(target)
            self._touch(target)
            if self._merged and self._merged != target:
                self._unmerge()
            self._apply(target)
            if (self.merge_mode if merge is None else merge) and len(target) == 1:
                self._merge()

    @contextlib.contextmanager
    def pinned(self, names: Iterable[str]):
        """Keep ``names`` out of eviction for the body (a server's running batch holds its rows' adapters).

        Pinned adapters still count towards the residency budget; unloading one raises until released.
        """
        with self._lock:
            names = self._pinned.hold(names)
        try:
            yield
        finally:
            with self._lock:
                self._pinned.release(names)

    def hold(self, adapter: str | None = None, *, weights: Sequence[tuple[str, float]] | None = None) -> AdapterHold:
        """Keep what a request decodes with out of eviction and unloading until the hold is released.

        ``adapter``: a name (``None``: the base model, nothing to hold). ``weights``: ``(adapter, weight)``
        pairs instead, whose composition is built or reused from the cache (bounded: past
        :data:`~.compositions.MAX_COMPOSITIONS` the least recently used one nobody holds is unloaded); the
        hold's ``name`` is then the composition's. A plain adapter is not loaded here (whoever decodes
        loads it); holding it keeps it resident once loaded.
        """
        with self._lock:
            name = self._compositions.get(tuple(weights)) if weights else adapter
            if name is not None:
                self._pinned.hold([name])
            if weights:
                self._compositions.trim()

        def release() -> None:
            if name is not None:
                with self._lock:
                    self._pinned.release([name])

        return AdapterHold(name, release)

    @contextlib.contextmanager
    def _pin(self, names: Iterable[str]):
        with self._pinned.holding(names):
            yield

    @contextlib.contextmanager
    def scope(self, adapter: Any):
        """Use ``adapter`` (a name, a list, None for base) for the body only; restore afterwards.

        ``adapter`` set to :data:`UNSET` keeps the active state (and merges it when merge mode is on).
        """
        with self._lock:
            if adapter is UNSET:
                if self.merge_mode and len(self._active) == 1 and not self._merged:
                    self._merge()
                with self._pin(self._active):
                    yield
                return
            target = _as_tuple(adapter)
            previous = self._active
            if target == previous:
                with self._pin(target):
                    yield
                return
            with self._pin(previous + target):
                target = self.ensure_loaded(target)
                with self._pin(target):
                    self._touch(target)
                    if target != previous:
                        self._unmerge()
                        self._apply(target)
                    try:
                        yield
                    finally:
                        if target != previous:
                            self._apply(previous)

    def rows(self, adapters: Sequence[str | None], batch_size: int) -> list[str | None]:
        """Check a mixed batch's per-row adapters and make them resident (pinned while loading)."""
        if len(adapters) != batch_size:
            raise AdapterError(
                f"adapters has {len(adapters)} entries for a batch of {batch_size} prompts; give one per prompt "
                "(None for the base model)"
            )
        names = [a for a in adapters if a is not None]
        for a in names:
            if not isinstance(a, str):
                raise AdapterError(f"mixed batches take one adapter name (or None) per row, got {a!r}")
        with self._pin(names):  # a budget smaller than the batch must not evict one of its rows' adapters
            unique = list(dict.fromkeys(names))
            resolved = dict(zip(unique, self.ensure_loaded(unique)))
        rows = [None if a is None else resolved[a] for a in adapters]
        self._touch(n for n in rows if n is not None)
        return rows

    # -- merge -------------------------------------------------------------------
    def merge(self) -> None:
        """Merge the single active adapter into the base weights (full base speed)."""
        if not self.CAN_MERGE:
            raise self._unsupported("merge adapters")
        with self._lock:
            if len(self._active) != 1:
                raise AdapterError(
                    f"merge needs exactly one active adapter, active is {self.active!r}; switch_adapter(name) first"
                )
            self._merge()

    def unmerge(self) -> None:
        """Restore the base weights exactly (the adapter stays active, unmerged)."""
        with self._lock:
            self._unmerge()

    # -- composition -------------------------------------------------------------------
    def compose(
        self,
        weights: dict[str, float],
        name: str,
        method: str = "linear",
        *,
        density: float | None = None,
        svd_rank: int | None = None,
        majority_sign_method: str = "total",
        activate: bool = False,
    ) -> AdapterInfo:
        """A new adapter ``name`` from weighted adapters (``method`` among ``COMPOSE_METHODS``)."""
        with self._lock:
            if method not in COMBINATIONS:
                raise AdapterError(f"composition method {method!r} is unknown; use one of {', '.join(COMBINATIONS)}")
            if method not in self.COMPOSE_METHODS:
                raise self._unsupported(
                    f"compose adapters with method {method!r} (it can: {', '.join(self.COMPOSE_METHODS) or 'none'})"
                )
            check_composition_weights(weights, f"compose_adapters({name!r})")
            if not isinstance(name, str) or not is_bare_name(name) or not name.strip():
                raise AdapterError(f"a composed adapter's name must be a plain name (no path), got {name!r}")
            for key, value in (("density", density), ("svd_rank", svd_rank)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not math.isfinite(value) or value <= 0):
                    raise AdapterError(f"compose_adapters({name!r}): {key} must be a positive number, got {value!r}")
            if name in self._infos or name in self._known or name == BASE:
                raise AdapterError(
                    f"adapter name {name!r} is already in use (loaded or evicted); the old adapter would silently "
                    "stay: pick another name or unload it first"
                )
            with self._pin(weights):
                sources = list(self.ensure_loaded(weights))
            weights = dict(zip(sources, weights.values()))
            with self._pin(sources):
                infos = [self._infos[s] for s in sources]
                with_save = [i.name for i in infos if i.modules_to_save]
                if with_save:
                    raise AdapterError(
                        f"cannot compose {with_save}: they carry modules_to_save (full copies of layers), which "
                        "cannot be weighted; compose LoRA-only adapters"
                    )
                if method in _SAME_RANK and len(sources) > 1:
                    ranks = {i.name: _max_rank(i) for i in infos}
                    if len(set(ranks.values())) > 1:
                        raise AdapterError(
                            f"method {method!r} needs adapters of one rank, got ranks "
                            f"{', '.join(f'{k}={v}' for k, v in ranks.items())}; use method='cat' or 'svd' "
                            "(or the *_svd variants) to combine different ranks"
                        )
                self._unmerge()
                options = {"density": density, "svd_rank": svd_rank, "majority_sign_method": majority_sign_method}
                info = self._compose(sources, {s: float(weights[s]) for s in sources}, name, method, options)
            self._infos[name] = info
            self._touch([name])
            if activate:
                self.switch(name)
            self._make_room()  # its sources are no longer in use
            return info

    def close(self) -> None:
        """Forget everything (the engine is dropping its model)."""
        with self._lock:
            self._unmerge()
            self._close()
            self._compositions = CompositionCache(self)
            self._infos.clear()
            self._known.clear()
            self._active = ()

    def _unsupported(self, what: str) -> BackendError:
        return BackendError(
            f"the {self.backend} backend cannot {what}; load the model with backend='transformers' "
            "(CLI: --backend transformers) for every adapter operation"
        )


#: The largest composition weight (in magnitude) accepted. A weight scales its adapter's delta: on SmolLM2 with
#: math_specialist (llama.cpp, greedy), 1 and 2 answer "25 x 8 = 20 x 8 + 5 x 8 = 160 + ...", 5 garbles the
#: arithmetic, 10 gives fragments, 20 empty text, 100 and more repeated tokens, 1e6 and 1e308 one token of
#: nothing. 10 leaves room for adapters trained with a small alpha; beyond it a weight can only be a mistake.
MAX_COMPOSITION_WEIGHT = 10.0


def check_composition_weights(weights, who: str = "compose_adapters") -> dict[str, float]:
    """``{adapter: weight}`` checked: finite numbers of magnitude at most :data:`MAX_COMPOSITION_WEIGHT`.

    The one owner of this rule: the engine's ``compose_adapters`` and the server's ``adapters`` field both
    come here. Raises :class:`AdapterError` naming the adapter, the weight and the range.
    """
    if not isinstance(weights, dict) or not weights:
        raise AdapterError(f"{who} needs a dict of adapter name -> weight, got {weights!r}")
    out = {}
    for source, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise AdapterError(f"{who}: the weight of {source!r} must be a finite number, got {weight!r}")
        if abs(weight) > MAX_COMPOSITION_WEIGHT:
            raise AdapterError(
                f"{who}: the weight of {source!r} is {weight!r}; weights lie in [-{MAX_COMPOSITION_WEIGHT:g}, "
                f"{MAX_COMPOSITION_WEIGHT:g}] (a weight scales the adapter's change to the model: past a few times "
                "1 the answers are garbage or empty)"
            )
        out[source] = float(weight)
    return out


def composed_info(name: str, method: str, weights: dict[str, float], infos: Sequence[AdapterInfo], *,
                  rank: int | None, alpha: float | None, target_modules, tensor_bytes: int | None) -> AdapterInfo:
    """The :class:`AdapterInfo` of a composition (no folder: it is never evicted, only unloaded)."""
    return AdapterInfo(
        composed=True,
        name=name,
        path=f"<composed {method}: " + ", ".join(f"{s}*{w}" for s, w in weights.items()) + ">",
        peft_type="LORA", rank=rank, alpha=alpha, target_modules=target_modules,
        modules_to_save=(), base_model=infos[0].base_model, base_family=infos[0].base_family,
        tensor_count=None, tensor_bytes=tensor_bytes, weights_format=None, weights_file=None,
        metadata={"composed_from": dict(weights), "method": method},
    )


def check_residency_limits(max_loaded_adapters, max_adapter_bytes) -> None:
    """Residency limits are positive whole numbers or None; anything else raises :class:`AdapterError`."""
    for name, value in (("max_loaded_adapters", max_loaded_adapters), ("max_adapter_bytes", max_adapter_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AdapterError(f"{name} must be a positive whole number or None, got {value!r}")


def _max_rank(info: AdapterInfo) -> int | None:
    pattern = info.config.get("rank_pattern") or {}
    return max([info.rank or 0, *pattern.values()]) if pattern else info.rank


def _as_tuple(names) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str):
        return (names,)
    if not isinstance(names, (list, tuple)):
        raise AdapterError(
            f"an adapter is named by a string (or a list of names, or None for the base model), got {names!r}"
        )
    out = tuple(names)
    for n in out:
        if not isinstance(n, str):
            raise AdapterError(f"adapter names must be strings, got {n!r} in {list(out)!r}")
    return out
