"""Every use of peft internals (private methods and attributes), in one place.

adaptrix switches, injects and batches adapters faster than peft's public API
allows, which means touching peft's insides. They change between releases, so
they live here only, and ``tests/test_adapters_engine.py`` fails loudly when
the installed peft is not one of :data:`CHECKED_PEFT_VERSIONS`: read this
module against the new release, then add it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

#: peft releases this module was read against and the adapter tests pass with.
CHECKED_PEFT_VERSIONS = ("0.21.2",)


def set_active(peft_model, layers: Iterable, names: tuple[str, ...]) -> None:
    """Make ``names`` the active adapters (``()``: none, the base model) without peft's model walk.

    Sets each tuner layer's ``_active_adapter``, the tuner's ``active_adapter``
    and the PeftModel's own ``active_adapter``. peft reads the last one in every
    ``generate``/``forward`` (``peft_config[active_adapter]``), so it must always
    name an adapter that still exists, even while none is active: peft leaves
    it on a deleted adapter after ``delete_adapter`` (then every call fails
    with ``KeyError``).
    """
    active = list(names)
    for layer in layers:  # plain attributes: skip nn.Module.__setattr__ (10x slower)
        layer.__dict__["_active_adapter"] = active
    if peft_model is None:
        return
    peft_model.base_model.__dict__["active_adapter"] = active[0] if len(active) == 1 else active
    configs = peft_model.peft_config
    current = peft_model.__dict__.get("active_adapter")
    if active:
        peft_model.__dict__["active_adapter"] = active[0]
    elif current not in configs and configs:
        peft_model.__dict__["active_adapter"] = next(iter(configs))


def add_lora_modules(peft_model, config, name: str, module_names: list[str]) -> list[tuple[str, Any, str, Any, bool]]:
    """Add LoRA adapter ``name`` (a ``LoraConfig``) to just ``module_names`` with peft's per-module factory.

    Returns ``(module_name, parent, attribute, lora_layer, newly_wrapped)`` per module. On an
    exception the caller deletes the adapter (``peft_model.delete_adapter``).
    """
    tuner = peft_model.base_model
    model = tuner.model
    config = tuner._prepare_adapter_config(config, tuner.get_model_config(model))
    peft_model.peft_config[name] = config
    tuner._check_new_adapter_config(config)
    out = []
    for module_name in module_names:
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name)
        target = parent._modules[child]
        tuner._check_target_module_compatiblity(config, model, child)
        tuner._create_and_replace(config, name, target, child, parent, current_key=module_name)
        layer = parent._modules[child]
        out.append((module_name, parent, child, layer, layer is not target))
    for module_name in module_names:
        if module_name not in tuner.targeted_module_names:
            tuner.targeted_module_names.append(module_name)
    return out


def wrap_forward_hooks(peft_model, wrapper: Callable) -> None:
    """Route peft's ``_enable_peft_forward_hooks`` (where ``adapter_names`` batches start) through
    ``wrapper(original, *args, **kwargs)``, a context-manager function. Idempotent."""
    tuner = peft_model.base_model
    if getattr(tuner, "_adaptrix_hooks", False):
        return
    original = tuner._enable_peft_forward_hooks

    @contextlib.contextmanager
    def enable(*args, **kwargs):
        with wrapper(original, *args, **kwargs):
            yield

    tuner._enable_peft_forward_hooks = enable
    tuner._adaptrix_hooks = True


def strip_lora(model) -> None:
    """Put back the original layers wherever a failed peft injection left a LoRA wrapper."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            original = (
                module.get_base_layer() if isinstance(module, BaseTunerLayer) else getattr(module, "original_module")
            )
            setattr(parent, child, original)
