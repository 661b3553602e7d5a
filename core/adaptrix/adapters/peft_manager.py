"""Adapters on the transformers backend, with :class:`peft.PeftModel` (the reference).

What adaptrix adds to peft, on top of the shared :class:`~.manager.AdapterManager`:

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
- every composition method of peft's ``add_weighted_adapter``.
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
from pathlib import Path
from typing import Any, Sequence

from adaptrix.adapters import peft_compat
from adaptrix.adapters.compositions import COMBINATIONS, composed_info
from adaptrix.adapters.info import AdapterInfo
from adaptrix.adapters.inject import inject, plan
from adaptrix.adapters.manager import BASE, AdapterManager
from adaptrix.adapters.validate import ModuleIndex
from adaptrix.errors import AdapterError
from adaptrix.storage.files import guard

#: Sets of adapters whose mixed-batch weights stay built (each holds a copy of its adapters' LoRA
#: weights, concatenated): a server's batch goes back and forth between a few sets as rows come and go.
MIXED_SETS = 4

_NEEDS_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                  "magnitude_prune", "magnitude_prune_svd")


class PeftAdapterManager(AdapterManager):
    """LoRA adapters on a transformers model through peft."""

    backend = "transformers"
    COMPOSE_METHODS = COMBINATIONS
    CAN_MERGE = True

    def __init__(self, loaded, adapters_dir="adapters", **options):
        super().__init__(loaded, adapters_dir, **options)
        self.base = loaded.model
        self.peft = None  # the PeftModel once an adapter is loaded
        self._layers: list = []  # peft tuner layers (and modules_to_save wrappers)
        self._lora_layers: list = []  # Linear LoRA layers, for the batched mixed forward
        self._stash: list[tuple[Any, Any]] = []
        self._slots: list[tuple[Any, str, Any]] = []  # (parent, attribute, LoRA layer)
        self._unwrapped = False
        #: MixedBatch per set of adapters, most recently used last (at most MIXED_SETS)
        self._mixed: collections.OrderedDict[tuple[str, ...], Any] = collections.OrderedDict()

    def generation_model(self):
        """The module to call ``generate`` on: the PeftModel while LoRA layers are in the forward path,
        else (no adapter loaded, or the active one merged with its wrappers swapped out) the base model."""
        return self.peft if self.peft is not None and not self._unwrapped else self.base

    # -- weights --------------------------------------------------------------------
    def _module_index(self) -> ModuleIndex:
        return ModuleIndex.from_model(self.base)

    def _add(self, info: AdapterInfo, state) -> None:
        folder = Path(info.path)
        with contextlib.ExitStack() as stack:
            if state is not None:  # a pickle the user allowed: hand peft a safetensors copy
                from safetensors.torch import save_file


                with guard(tempfile.gettempdir(), f"write a safetensors copy of adapter {info.name!r} into",
                           "set TMPDIR to a writable folder", "free some space, or set TMPDIR to a disk with room"):
                    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adaptrix-")))
                    (tmp / "adapter_config.json").write_text(Path(folder, "adapter_config.json").read_text())
                    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
                folder = tmp
            try:
                if self.peft is None:
                    self.peft = _wrap(self.base, str(folder), info.name)
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

    def _remove(self, name: str) -> None:
        if not self._infos:
            self.peft.unload()  # puts the original modules back
            self.peft = None
        else:
            self.peft.delete_adapter(name)
        self._refresh_layers()

    def _apply(self, target: tuple[str, ...]) -> None:
        """Set the active adapters on the cached LoRA layers (no model walk)."""
        peft_compat.set_active(self.peft, self._layers, target)
        self._active = target

    def _refresh_layers(self) -> None:
        self._mixed.clear()
        if self.peft is None:
            self._layers, self._lora_layers, self._slots = [], [], []
            return
        self._layers, self._lora_layers, self._slots = _tuner_layers(self.peft)

    def _add_layers(self, slots) -> None:
        """LoRA layers created by a direct injection (modules no earlier adapter targeted)."""
        self._mixed.clear()
        for parent, child, layer in slots:
            self._layers.append(layer)
            self._lora_layers.append(layer)
            self._slots.append((parent, child, layer))

    def _close(self) -> None:
        self.peft = None
        self._layers, self._lora_layers, self._slots = [], [], []
        self._mixed.clear()

    # -- merge -------------------------------------------------------------------
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
    def batch_kwargs(self, row_adapters: Sequence[str | None] | None, batch_size: int) -> dict:
        """``generate`` kwargs that give row i the adapter ``row_adapters[i]`` (None: the base)."""
        with self._lock:
            if not row_adapters:
                return {}
            row_adapters = self.rows(row_adapters, batch_size)
            names = [a for a in row_adapters if a is not None]
            if not names and self.peft is None:
                return {}
            self._check_mixed_modules_to_save(names)
            self._unmerge()  # before the caller picks generation_model(): adapter_names needs the PeftModel
            self._install_mixed_forward()
            return {"adapter_names": [a if a is not None else BASE for a in row_adapters]}

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
        from adaptrix.adapters.mixed import MixedBatch

        unique = sorted({n for n in names if n != BASE})
        if tuple(unique) in self._mixed:  # built for these adapters: they fit (any change clears the cache)
            return True
        if any(n not in self._infos or self._infos[n].modules_to_save for n in unique):
            return False
        return MixedBatch.fits(self._slots, unique)

    @contextlib.contextmanager
    def _mixed_forward(self, names: list[str]):
        """Swap every LoRA wrapper for a module serving each row its own adapter (see :mod:`.mixed`)."""
        from adaptrix.adapters.mixed import MixedBatch

        unique = tuple(sorted({n for n in names if n != BASE}))
        batch = self._mixed.get(unique)
        if batch is None:
            while len(self._mixed) >= MIXED_SETS:
                self._mixed.popitem(last=False)
            batch = self._mixed[unique] = MixedBatch(self._slots, list(unique))
        self._mixed.move_to_end(unique)
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
    def _compose(self, sources, weights, name, method, options) -> AdapterInfo:
        density = options.get("density")
        if method in _NEEDS_DENSITY and density is None:
            density = 0.5
        kwargs: dict[str, Any] = {"combination_type": method, "majority_sign_method": options["majority_sign_method"]}
        if density is not None:
            kwargs["density"] = density
        if options.get("svd_rank") is not None:
            kwargs["svd_rank"] = options["svd_rank"]
        try:
            self.peft.add_weighted_adapter(sources, [weights[s] for s in sources], name, **kwargs)
        except Exception as exc:
            self._rollback(name)
            raise AdapterError(
                f"composing {sources} into {name!r} with method {method!r} failed "
                f"({type(exc).__name__}: {exc}); nothing changed"
            ) from exc
        self._refresh_layers()
        self._apply(self._active)
        cfg = self.peft.peft_config[name]
        infos = [self._infos[s] for s in sources]
        targets = cfg.target_modules
        return composed_info(
            name, method, weights, infos, rank=cfg.r, alpha=cfg.lora_alpha,
            target_modules=tuple(sorted(targets)) if not isinstance(targets, str) else targets,
            tensor_bytes=sum(i.tensor_bytes or 0 for i in infos) if method == "cat" else None,
        )


def _wrap(base, folder: str, name: str):
    """The first adapter: wrap the base model in a PeftModel (inference mode)."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated is_gradient_checkpointing on every
        # wrap; the deprecation is theirs to fix and tells our users nothing.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft = PeftModel.from_pretrained(base, folder, adapter_name=name, is_trainable=False)
    peft.eval()
    return peft


def _tuner_layers(peft) -> tuple[list, list, list]:
    """``(tuner layers and modules_to_save wrappers, LoRA layers, (parent, attribute, LoRA layer) slots)``."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers, slots = [], []
    for name, m in peft.named_modules():
        if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            layers.append(m)
            if isinstance(m, LoraLayer):
                parent, _, child = name.rpartition(".")
                slots.append((peft.get_submodule(parent), child, m))
    return layers, [m for m in layers if isinstance(m, LoraLayer)], slots
