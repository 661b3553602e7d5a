"""The adapter manager: load, switch, compose, merge and batch LoRA adapters.

Built on :class:`peft.PeftModel`; adaptrix adds what peft lacks:

- validation before any weight is read (see :mod:`.validate`), and a failed
  load leaves the model exactly as it was;
- O(LoRA layers) switching: the LoRA layers are listed once after each
  load/unload, and a switch sets their active adapter directly instead of
  peft's ``set_adapter`` walk over every module of the model;
- exact merge/unmerge: the base weights of merged layers are stashed and
  copied back, so unmerging restores the base bit for bit; while merged, the
  LoRA wrappers are taken out of the module tree (full base speed);
- a mixed-adapter forward for ``adapter_names`` batches: two dense matmuls
  per layer over the batch's adapters concatenated on the rank axis, instead
  of peft's per-adapter loop (see :mod:`.mixed`);
- loads that do not slow down as adapters accumulate: plain LoRA adapters are
  injected into just the modules validation named (see :mod:`.inject`);
- LRU residency (count and byte budget) with transparent reload.

All public methods hold ``lock`` (the engine passes its generation lock).
"""

from __future__ import annotations

import collections
import math
import contextlib
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import AdapterError, AdapterFormatError, AdapterIncompatibleError, AdapterNotFoundError
from ..types import UNSET
from . import peft_compat
from .info import AdapterInfo, TensorSpec, load_pickle_state, read_adapter_info
from .inject import inject, plan
from .sources import available_adapters, is_bare_name, resolve_adapter
from .validate import CompatibilityReport, ModuleIndex, validate

BASE = "__base__"
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
_SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
_NEEDS_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                  "magnitude_prune", "magnitude_prune_svd")


class AdapterManager:
    """LoRA adapters on one loaded model (an :class:`~adaptrix.types.LoadedModel`).

    ``max_loaded_adapters`` / ``max_adapter_bytes`` bound residency (LRU);
    ``merge=True`` keeps a single active adapter merged into the weights.
    """

    def __init__(
        self,
        loaded,
        adapters_dir: str | Path | None = "adapters",
        *,
        max_loaded_adapters: int | None = None,
        max_adapter_bytes: int | None = None,
        merge: bool = False,
        lock=None,
    ):
        check_residency_limits(max_loaded_adapters, max_adapter_bytes)
        self.loaded = loaded
        self.base = loaded.model
        self.adapters_dir = adapters_dir
        self.max_loaded_adapters = max_loaded_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.merge_mode = merge
        self._lock = lock if lock is not None else threading.RLock()
        self.peft = None  # the PeftModel once an adapter is loaded
        self._infos: dict[str, AdapterInfo] = {}  # loaded adapters
        self._known: dict[str, tuple[Path, bool]] = {}  # evicted, reloadable: name -> (folder, allow_pickle)
        self._lru: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._active: tuple[str, ...] = ()
        self._layers: list = []  # peft tuner layers (and modules_to_save wrappers)
        self._lora_layers: list = []  # Linear LoRA layers, for the batched mixed forward
        self._merged: tuple[str, ...] = ()
        self._stash: list[tuple[Any, Any]] = []
        self._slots: list[tuple[Any, str, Any]] = []  # (parent, attribute, LoRA layer)
        self._unwrapped = False
        self._pinned: collections.Counter = collections.Counter()
        self._index: ModuleIndex | None = None
        self._mixed = None  # the last MixedBatch (concatenated LoRA weights of one set of adapters)

    # -- queries -----------------------------------------------------------
    @property
    def index(self) -> ModuleIndex:
        if self._index is None:
            self._index = ModuleIndex.from_model(self.base)
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

    def info(self, name: str) -> AdapterInfo:
        if name in self._infos:
            return self._infos[name]
        _, folder = resolve_adapter(name, self.adapters_dir)
        return read_adapter_info(folder, name)

    def generation_model(self):
        """The module to call ``generate`` on: the PeftModel while LoRA layers are in the forward path,
        else (no adapter loaded, or the active one merged with its wrappers swapped out) the base model."""
        return self.peft if self.peft is not None and not self._unwrapped else self.base

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
            info = read_adapter_info(folder, name)
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
            allow_pickle=allow_pickle, tensors=tensors,
        )
        return report, state

    # -- load / unload ---------------------------------------------------------
    def load(
        self, name_or_path: str | Path, *, name: str | None = None, allow_pickle: bool = False, activate: bool = True
    ) -> AdapterInfo:
        """Validate, then load an adapter; on error nothing changes. Returns its :class:`AdapterInfo`."""
        with self._lock:
            if name is None and str(name_or_path) in self._known:
                name = str(name_or_path)
                folder, allow_pickle = self._known[name]
                found = name, folder
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
            info = read_adapter_info(folder, name)
            report, state = self._validate(info, allow_pickle)
            if not report.ok:
                raise AdapterIncompatibleError(report.message(), report)
            self._inject(info, state)
            self._known.pop(name, None)
            self._infos[name] = info
            self._touch([name])
            self._apply(self._active)
            if activate:
                self.switch(name)
            self._make_room()
            return info

    def _inject(self, info: AdapterInfo, state) -> None:
        folder = Path(info.path)
        with contextlib.ExitStack() as stack:
            if state is not None:  # a pickle the user allowed: hand peft a safetensors copy
                from safetensors.torch import save_file

                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adaptrix-")))
                (tmp / "adapter_config.json").write_text(Path(folder, "adapter_config.json").read_text())
                save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
                folder = tmp
            self._unmerge()
            try:
                if self.peft is None:
                    import warnings

                    from peft import PeftModel

                    with warnings.catch_warnings():
                        # peft 0.21 calls transformers 5's deprecated is_gradient_checkpointing on every
                        # wrap; the deprecation is theirs to fix and tells our users nothing.
                        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                        peft = PeftModel.from_pretrained(
                            self.base, str(folder), adapter_name=info.name, is_trainable=False
                        )
                    peft.eval()
                    self.peft = peft
                    self._refresh_layers()
                elif (modules := plan(info, self.index, self.base) if state is None else None) is not None:
                    self._add_layers(inject(self.peft, info, modules))  # only the modules validation named
                else:
                    self.peft.load_adapter(str(folder), adapter_name=info.name, is_trainable=False)
                    self._refresh_layers()
            except Exception as exc:
                self._rollback(info.name)
                raise AdapterError(
                    f"adapter {info.name!r}: peft failed to load {folder} ({type(exc).__name__}: {exc}); "
                    "the model is unchanged"
                ) from exc

    def _rollback(self, name: str) -> None:
        if self.peft is None:
            peft_compat.strip_lora(self.base)
            return
        if name in self.peft.peft_config:
            with contextlib.suppress(Exception):
                self.peft.delete_adapter(name)
        self._refresh_layers()
        self._apply(self._active)

    def unload(self, name: str) -> None:
        """Remove an adapter from memory (and forget it for transparent reload)."""
        with self._lock:
            if name not in self._infos:
                if self._known.pop(name, None) is not None:
                    return
                raise AdapterNotFoundError(
                    f"adapter {name!r} is not loaded; loaded: {', '.join(self._infos) or '(none)'}"
                )
            if self._pinned[name]:
                raise AdapterError(f"adapter {name!r} is in use by a running generation; unload it afterwards")
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._unmerge()
        remaining = tuple(a for a in self._active if a != name)
        del self._infos[name]
        self._lru.pop(name, None)
        if not self._infos:
            self.peft.unload()  # puts the original modules back
            self.peft = None
            self._refresh_layers()
        else:
            self.peft.delete_adapter(name)
            self._refresh_layers()
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
                 and not self._infos[n].path.startswith("<")),
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

    def ensure_loaded(self, names: Iterable[str]) -> None:
        """Load (or transparently reload) adapters asked for by name."""
        for n in names:
            if n not in self._infos:
                self.load(n, name=n if n in self._known else None, activate=False)

    # -- switching ------------------------------------------------------------
    def switch(self, names: str | Sequence[str] | None, *, merge: bool | None = None) -> None:
        """Make ``names`` active (None: base model only; several: their outputs are summed)."""
        with self._lock:
            target = _as_tuple(names)
            if any(n not in self._infos for n in target):
                with self._pin(target):
                    self.ensure_loaded(target)
            self._touch(target)
            if self._merged and self._merged != target:
                self._unmerge()
            self._apply(target)
            if (self.merge_mode if merge is None else merge) and len(target) == 1:
                self._merge()

    def _apply(self, target: tuple[str, ...]) -> None:
        """Set the active adapters on the cached LoRA layers (no model walk)."""
        peft_compat.set_active(self.peft, self._layers, target)
        self._active = target

    def _refresh_layers(self) -> None:
        self._mixed = None
        if self.peft is None:
            self._layers, self._lora_layers, self._slots = [], [], []
            return
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self._layers, self._slots = [], []
        for name, m in self.peft.named_modules():
            if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                self._layers.append(m)
                if isinstance(m, LoraLayer):
                    parent, _, child = name.rpartition(".")
                    self._slots.append((self.peft.get_submodule(parent), child, m))
        self._lora_layers = [m for m in self._layers if isinstance(m, LoraLayer)]

    def _add_layers(self, slots) -> None:
        """LoRA layers created by a direct injection (modules no earlier adapter targeted)."""
        self._mixed = None
        for parent, child, layer in slots:
            self._layers.append(layer)
            self._lora_layers.append(layer)
            self._slots.append((parent, child, layer))

    @contextlib.contextmanager
    def _pin(self, names: Iterable[str]):
        names = list(names)
        self._pinned.update(names)
        try:
            yield
        finally:
            self._pinned.subtract(names)

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
                self.ensure_loaded(target)
                self._touch(target)
                self._unmerge()
                self._apply(target)
                try:
                    yield
                finally:
                    self._apply(previous)

    # -- merge -------------------------------------------------------------------
    def merge(self) -> None:
        """Merge the single active adapter into the base weights (full base speed)."""
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

    def _merge(self) -> None:
        if self._merged == self._active or len(self._active) != 1:
            return
        self._unmerge()
        (name,) = self._active
        stash = []
        try:
            for layer in self._lora_layers:
                if name in layer.lora_A or name in getattr(layer, "lora_embedding_A", {}):
                    weight = layer.get_base_layer().weight
                    stash.append((weight, weight.data.clone()))
                    layer.merge(adapter_names=[name])
        except Exception as exc:
            self._stash = stash
            self._unmerge()
            raise AdapterError(f"adapter {name!r}: merge failed ({type(exc).__name__}: {exc}); left unmerged") from exc
        self._stash = stash
        self._merged = (name,)
        # Full base speed: while merged, the LoRA wrappers leave the forward path entirely.
        for parent, child, layer in self._slots:
            parent._modules[child] = layer.get_base_layer()
        self._unwrapped = True

    def _unmerge(self) -> None:
        if not self._stash and not self._merged:
            return
        import torch

        if self._unwrapped:
            for parent, child, layer in self._slots:
                parent._modules[child] = layer
            self._unwrapped = False
        with torch.no_grad():
            for weight, saved in self._stash:
                weight.data.copy_(saved)
        for layer in self._lora_layers:
            if layer.merged_adapters:
                layer.merged_adapters.clear()
        self._stash, self._merged = [], ()

    # -- mixed batches -------------------------------------------------------------
    def batch_kwargs(self, adapters: Sequence[str | None] | None, batch_size: int) -> dict:
        """``generate`` kwargs that give row i the adapter ``adapters[i]`` (None: the base)."""
        with self._lock:
            if not adapters:
                return {}
            if len(adapters) != batch_size:
                raise AdapterError(
                    f"adapters has {len(adapters)} entries for a batch of {batch_size} prompts; give one per prompt "
                    "(None for the base model)"
                )
            names = [a for a in adapters if a is not None]
            if not names and self.peft is None:
                return {}
            for a in names:
                if not isinstance(a, str):
                    raise AdapterError(f"mixed batches take one adapter name (or None) per row, got {a!r}")
            with self._pin(names):  # a budget smaller than the batch must not evict one of its rows' adapters
                self.ensure_loaded(dict.fromkeys(names))
            self._check_mixed_modules_to_save(names)
            self._touch(names)
            self._unmerge()  # before the caller picks generation_model(): adapter_names needs the PeftModel
            self._install_mixed_forward()
            return {"adapter_names": [a if a is not None else BASE for a in adapters]}

    def _check_mixed_modules_to_save(self, names: Sequence[str]) -> None:
        """Refuse a batch peft cannot serve: a ``modules_to_save`` copy missing for another row's adapter.

        peft's per-row path looks every row's adapter up in each
        ``modules_to_save`` wrapper and fails with a bare ``KeyError`` when one
        of them has no copy of that layer.
        """
        unique = sorted(set(names))
        saved = {n: set(self._infos[n].modules_to_save or ()) for n in unique if n in self._infos}
        for module in sorted(set().union(*saved.values()) if saved else ()):
            lacking = [n for n in unique if module not in saved.get(n, set())]
            if lacking:
                holders = [n for n in unique if module in saved.get(n, set())]
                raise AdapterError(
                    f"cannot batch adapters {holders} with {lacking}: {holders} carry a full copy of "
                    f"{module!r} (modules_to_save) and {lacking} do not, which peft cannot mix in one batch; "
                    "generate those rows in separate calls"
                )

    def _install_mixed_forward(self) -> None:
        """Route peft's ``adapter_names`` batches through :meth:`_mixed_forward` on this PeftModel."""
        manager = self

        @contextlib.contextmanager
        def enable(original, *args, **kwargs):
            names = kwargs.get("adapter_names")
            if names is None:
                with original(*args, **kwargs):
                    yield
                return
            with manager._lock:
                manager._unmerge()  # peft refuses adapter_names on merged layers
                if not manager._fast_mixed_ok(names):  # embeddings / modules_to_save: peft's per-row path
                    with original(*args, **kwargs):
                        yield
                    return
                kwargs.pop("adapter_names")
                with manager._mixed_forward(list(names)), original(*args, **kwargs):
                    yield

        peft_compat.wrap_forward_hooks(self.peft, enable)

    def _fast_mixed_ok(self, names: Sequence[str]) -> bool:
        """The concatenated path serves plain Linear LoRA only (no embeddings, modules_to_save, variants)."""
        from .mixed import MixedBatch

        unique = sorted({n for n in names if n != BASE})
        if any(n not in self._infos or self._infos[n].modules_to_save for n in unique):
            return False
        return MixedBatch.fits(self._slots, unique)

    @contextlib.contextmanager
    def _mixed_forward(self, names: list[str]):
        """Swap every LoRA wrapper for a module serving each row its own adapter (see :mod:`.mixed`)."""
        from .mixed import MixedBatch

        unique = sorted({n for n in names if n != BASE})
        if self._mixed is None or self._mixed.adapters != unique:
            self._mixed = None  # drop the old copies before building new ones
            self._mixed = MixedBatch(self._slots, unique)
        batch = self._mixed
        batch.set_rows(names, BASE)
        previous = self._active
        with self._pin(unique):
            self._apply(())  # modules_to_save wrappers and the like: base only
            try:
                for parent, child, module in batch.swaps:
                    parent._modules[child] = module
                yield
            finally:
                for parent, child, layer in self._slots:
                    parent._modules[child] = layer
                self._apply(previous)

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
        """A new adapter ``name`` from weighted adapters, with peft's ``add_weighted_adapter``."""
        with self._lock:
            if method not in COMBINATIONS:
                raise AdapterError(f"composition method {method!r} is unknown; use one of {', '.join(COMBINATIONS)}")
            if not isinstance(weights, dict) or not weights:
                raise AdapterError(
                    f"compose_adapters({name!r}) needs a dict of adapter name -> weight, got {weights!r}"
                )
            if not isinstance(name, str) or not is_bare_name(name) or not name.strip():
                raise AdapterError(f"a composed adapter's name must be a plain name (no path), got {name!r}")
            for source, weight in weights.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                    raise AdapterError(
                        f"compose_adapters({name!r}): the weight of {source!r} must be a finite number, got {weight!r}"
                    )
            for key, value in (("density", density), ("svd_rank", svd_rank)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not math.isfinite(value) or value <= 0):
                    raise AdapterError(f"compose_adapters({name!r}): {key} must be a positive number, got {value!r}")
            if name in self._infos or name in self._known or name == BASE:
                raise AdapterError(
                    f"adapter name {name!r} is already in use (loaded or evicted); peft would silently keep the "
                    "old adapter: pick another name or unload it first"
                )
            sources = list(weights)
            with self._pin(sources):
                self.ensure_loaded(sources)
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
                if method in _NEEDS_DENSITY and density is None:
                    density = 0.5
                self._unmerge()
                kwargs: dict[str, Any] = {"combination_type": method, "majority_sign_method": majority_sign_method}
                if density is not None:
                    kwargs["density"] = density
                if svd_rank is not None:
                    kwargs["svd_rank"] = svd_rank
                try:
                    self.peft.add_weighted_adapter(sources, [float(weights[s]) for s in sources], name, **kwargs)
                except Exception as exc:
                    self._rollback(name)
                    raise AdapterError(
                        f"composing {sources} into {name!r} with method {method!r} failed "
                        f"({type(exc).__name__}: {exc}); nothing changed"
                    ) from exc
            self._refresh_layers()
            self._apply(self._active)
            cfg = self.peft.peft_config[name]
            info = AdapterInfo(
                name=name,
                path=f"<composed {method}: " + ", ".join(f"{s}*{weights[s]}" for s in sources) + ">",
                peft_type="LORA", rank=cfg.r, alpha=cfg.lora_alpha,
                target_modules=tuple(sorted(cfg.target_modules)) if not isinstance(cfg.target_modules, str)
                else cfg.target_modules,
                modules_to_save=(), base_model=infos[0].base_model, base_family=infos[0].base_family,
                tensor_count=None, tensor_bytes=sum(i.tensor_bytes or 0 for i in infos) if method == "cat" else None,
                weights_format=None, weights_file=None,
                metadata={"composed_from": dict(weights), "method": method},
            )
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
            self.peft = None
            self._infos.clear()
            self._known.clear()
            self._layers, self._lora_layers, self._slots, self._active = [], [], [], ()
            self._mixed = None


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
