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

Residency policy (limits, LRU order, which adapter to evict) lives in
:mod:`.residency`, the rules of a composition in :mod:`.compositions`, the
listing in :func:`.sources.adapter_rows`.

Applying weights is a backend's job, in a subclass:
:class:`~.peft_manager.PeftAdapterManager` (transformers + peft: merging, every
composition method, mixed-adapter batches) in the core, others in backend
plugins. A subclass implements :class:`~.contract.AdapterBackend`:
``_module_index``, ``_add``, ``_remove`` and ``_apply``, and where it can
``_merge``/``_unmerge`` and ``_compose`` (with the methods it supports in
``COMPOSE_METHODS``).

All public methods hold ``lock`` (the engine passes its model lease).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import attrs

from adaptrix.adapters.compositions import (
    COMBINATIONS,
    AdapterHold,
    CompositionCache,
    check_composition,
    check_parts,
)
from adaptrix.adapters.contract import AdapterBackend
from adaptrix.adapters.convert import imported_folder
from adaptrix.adapters.info import AdapterInfo, load_pickle_state, read_adapter_info
from adaptrix.adapters.pins import Pins
from adaptrix.adapters.residency import Residency, check_residency_limits
from adaptrix.adapters.sources import adapter_rows, resolve_adapter
from adaptrix.adapters.validate import CompatibilityReport, ModuleIndex, require_valid, validate_with_state
from adaptrix.errors import (
    AdapterError,
    AdapterFormatError,
    AdapterIncompatibleError,
    AdapterNotFoundError,
)
from adaptrix.types import UNSET, Hooks, LoadedModel

#: The row name of the base model in a mixed batch.
BASE = "__base__"


@attrs.frozen
class Replacement:
    """What :meth:`AdapterManager.replace` did: the adapter now loaded, its validation report (warnings), and
    whether an adapter of that name (loaded or evicted) was replaced."""

    info: AdapterInfo
    report: CompatibilityReport
    replaced: bool


class AdapterManager(AdapterBackend):
    """LoRA adapters on one loaded model (an :class:`~adaptrix.types.LoadedModel`).

    ``max_loaded_adapters`` / ``max_adapter_bytes`` bound residency (LRU);
    ``merge=True`` keeps a single active adapter merged into the weights
    (backends that can merge).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        adapters_dir: str | Path | None = "adapters",
        *,
        max_loaded_adapters: int | None = None,
        max_adapter_bytes: int | None = None,
        merge: bool = False,
        lock=None,
        host: Hooks | None = None,
    ):
        self.loaded = loaded
        #: The engine's plugin host: names an adapter's base family and converts adapter files (GGUF LoRA).
        self.host = host
        self.adapters_dir = adapters_dir
        #: The residency limits and the order of use (LRU eviction).
        self.residency = Residency(max_loaded_adapters, max_adapter_bytes)
        self.merge_mode = merge
        self._lock = lock if lock is not None else threading.RLock()
        self._infos: dict[str, AdapterInfo] = {}  # loaded adapters
        self._known: dict[str, tuple[Path, bool]] = {}  # evicted, reloadable: name -> (folder, allow_pickle)
        self._active: tuple[str, ...] = ()
        self._merged: tuple[str, ...] = ()
        #: Holders per adapter (scopes, running rows, a backend's compositions): pinned ones are never evicted.
        self._pinned = Pins()
        self._index: ModuleIndex | None = None
        self._compositions = CompositionCache(self)

    # -- queries -----------------------------------------------------------
    @property
    def max_loaded_adapters(self) -> int | None:
        return self.residency.max_loaded_adapters

    @property
    def max_adapter_bytes(self) -> int | None:
        return self.residency.max_adapter_bytes

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
            return adapter_rows(self.adapters_dir, evicted={n: f for n, (f, _) in self._known.items()},
                                loaded=self._infos, active=self._active, merged=self._merged)

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

    def _validate(self, info: AdapterInfo, allow_pickle: bool) -> tuple[CompatibilityReport, dict | None]:
        return validate_with_state(info, self.index, model_family=self.loaded.family,
                                   model_id=self.loaded.model_id, allow_pickle=allow_pickle)

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
                found = file.stem, imported_folder(file, base=self.base_file, host=self.host)
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
            self._register(info, self._active)
            if activate:
                self.switch(name)
            self._make_room()
            return info

    def _checked(self, info: AdapterInfo, allow_pickle: bool) -> tuple[CompatibilityReport, dict | None]:
        """``(report, state)`` of a valid adapter; raises for an invalid one (:func:`.validate.require_valid`)."""
        report, state = self._validate(info, allow_pickle)
        require_valid(report, info, allow_pickle)
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
            target = self._active + (name,) if was_active else self._active
            try:
                self._add(info, state)
            except BaseException:
                if old is not None:  # put the old one back, as it was
                    self._add(old, old_state)
                    self._register(old, target)
                raise
            self._register(info, target)
            self._make_room()
            return Replacement(info, report, replaced=old is not None or evicted is not None)

    def _register(self, info: AdapterInfo, target: tuple[str, ...]) -> None:
        """Record ``info`` as loaded (its weights just added), most recently used, and make ``target`` active."""
        self._known.pop(info.name, None)
        self._infos[info.name] = info
        self._touch([info.name])
        self._apply(target)

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
        self.residency.forget(name)
        self._remove(name)
        self._active = ()
        self._apply(remaining)

    def _touch(self, names: Iterable[str]) -> None:
        self.residency.touch(names)

    def _make_room(self) -> None:
        """Evict the least recently used adapters not in use while over a residency limit."""
        while (victim := self.residency.victim(self._infos, self._in_use)) is not None:
            folder = Path(self._infos[victim].path)
            pickled = self._infos[victim].weights_format == "pickle"
            self._drop(victim)
            self._known[victim] = (folder, pickled)

    def _in_use(self, name: str) -> bool:
        """Never evicted: active, pinned, or a composition (no folder to reload it from)."""
        return name in self._active or self._pinned[name] > 0 or self._infos[name].composed

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
            self.residency.configure(max_loaded_adapters, max_adapter_bytes)
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

    def rows(self, row_adapters: Sequence[str | None], batch_size: int) -> list[str | None]:
        """Check a mixed batch's adapter per row (``None``: the base model) and make them resident (pinned
        while loading); the rows' adapter names (a path is loaded under its folder's name)."""
        names = _row_names(row_adapters, batch_size)
        with self._pin(names):  # a budget smaller than the batch must not evict one of its rows' adapters
            unique = list(dict.fromkeys(names))
            resolved = dict(zip(unique, self.ensure_loaded(unique)))
        rows = [None if a is None else resolved[a] for a in row_adapters]
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
            if method in COMBINATIONS and method not in self.COMPOSE_METHODS:
                raise self._unsupported(
                    f"compose adapters with method {method!r} (it can: {', '.join(self.COMPOSE_METHODS) or 'none'})"
                )
            check_composition(method, weights, name, density=density, svd_rank=svd_rank)
            if name in self._infos or name in self._known or name == BASE:
                raise AdapterError(
                    f"adapter name {name!r} is already in use (loaded or evicted); the old adapter would silently "
                    "stay: pick another name or unload it first"
                )
            with self._pin(weights):
                sources = list(self.ensure_loaded(weights))
            weights = dict(zip(sources, weights.values()))
            with self._pin(sources):
                check_parts(method, [self._infos[s] for s in sources])
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



def _row_names(row_adapters: Sequence[str | None], batch_size: int) -> list[str]:
    """The adapter names of a mixed batch's rows (``None``, the base model, left out), checked."""
    if len(row_adapters) != batch_size:
        raise AdapterError(
            f"adapters has {len(row_adapters)} entries for a batch of {batch_size} prompts; give one per prompt "
            "(None for the base model)"
        )
    names = [a for a in row_adapters if a is not None]
    for a in names:
        if not isinstance(a, str):
            raise AdapterError(f"mixed batches take one adapter name (or None) per row, got {a!r}")
    return names


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
