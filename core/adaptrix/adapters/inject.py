"""Adding one more LoRA adapter to a PeftModel without peft's whole-model passes.

``PeftModel.load_adapter`` matches ``target_modules`` against every module of
the model, snapshots every parameter's ``requires_grad``, walks the model again
to set the adapter, to freeze and to cast dtypes, and loads the file through
the model's full state dict. Each LoRA layer holds one sub-module per loaded
adapter, so all of these passes grow with the number of adapters loaded.

Validation has already named the modules an adapter targets (from its config
and the model's module index). For plain LoRA on Linear layers whose file
fills exactly those modules, :func:`inject` adds the adapter to just those
modules with peft's own per-module factory (:func:`.peft_compat.add_lora_modules`; it handles rank
and alpha patterns, rsLoRA scaling, dropout, device and dtype placement, and
wraps a module no earlier adapter targeted), copies the tensors from the file
into the new ``lora_A``/``lora_B`` weights, and applies peft's dtype autocast to
those layers only. Anything else (:func:`plan` returns ``None``) goes through
``PeftModel.load_adapter``.
"""

from __future__ import annotations

from typing import Any

from adaptrix.adapters import peft_compat
from adaptrix.adapters.info import AdapterInfo
from adaptrix.adapters.matching import split_key, targeted_modules
from adaptrix.adapters.validate import ModuleIndex

#: Config keys the direct path understands; any other key set to a non-empty
#: value (DoRA, layer patterns, weight tying, exotic initialisations, ...) means peft's loader.
_PLAIN_KEYS = frozenset({
    "peft_type", "peft_version", "task_type", "base_model_name_or_path", "revision", "auto_mapping",
    "inference_mode", "target_modules", "r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern",
    "use_rslora", "fan_in_fan_out", "init_lora_weights", "bias", "megatron_core", "qalora_group_size",
})
#: Initialisations that touch only the LoRA weights (which the file then overwrites).
_PLAIN_INITS = (True, False, "gaussian")
_PARAMS = ("lora_A.weight", "lora_B.weight")


def plan(info: AdapterInfo, index: ModuleIndex, model) -> list[str] | None:
    """The module names to inject ``info`` into directly, or None when peft's general loader is needed."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    cfg = info.config
    if info.weights_format != "safetensors" or info.modules_to_save or not info.tensors:
        return None
    if get_checkpoint_conversion_mapping(getattr(getattr(model, "config", None), "model_type", None)) is not None:
        return None  # peft renames targets for this architecture (transformers v5 MoE layouts)
    for key, value in cfg.items():
        if key not in _PLAIN_KEYS and value not in (None, False, {}, [], ""):
            return None
    if cfg.get("init_lora_weights", True) not in _PLAIN_INITS or cfg.get("bias", "none") != "none":
        return None
    if not isinstance(cfg.get("target_modules"), list):  # a regex or "all-linear": peft's own matching
        return None
    modules = targeted_modules(index, cfg)
    if not modules or any(index.modules[n].kind != "linear" or n == index.output_name for n in modules):
        return None
    wanted = {(n, p) for n in modules for p in _PARAMS}
    found = [split_key(t.name) for t in info.tensors]
    if len(found) != len(wanted) or set(found) != wanted:
        return None
    return modules


def inject(peft_model, info: AdapterInfo, modules: list[str]) -> list[tuple[Any, str, Any]]:
    """Add adapter ``info.name`` to ``modules`` of ``peft_model``; returns ``(parent, attribute, layer)``
    for each module that was not a LoRA layer before (newly wrapped).

    On an exception the caller deletes the adapter again (``peft_model.delete_adapter``).
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import load_file

    tensors = {split_key(k): v for k, v in load_file(info.weights_file).items()}
    config = LoraConfig.from_pretrained(info.path)
    config.inference_mode = True
    name = info.name
    wrapped = []
    for module_name, parent, child, layer, new in peft_compat.add_lora_modules(peft_model, config, name, modules):
        if new:
            wrapped.append((parent, child, layer))
        for sub in (layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]):
            _upcast(sub)  # before the copy, as peft does: a bfloat16 model keeps the file's float32 values
            sub.train(parent.training)  # new modules start in training mode (dropout!)
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(tensors[module_name, "lora_A.weight"])
            layer.lora_B[name].weight.copy_(tensors[module_name, "lora_B.weight"])
        if new:
            layer.train(parent.training)
    return wrapped


def _upcast(module) -> None:
    """peft's ``autocast_adapter_dtype`` for one adapter's module: float16/bfloat16/float8 weights become float32.

    (peft's ``cast_adapter_dtype`` walks every adapter of every layer.)
    """
    import torch

    for pname, p in list(module.named_parameters(recurse=False)):
        if p.dtype.is_floating_point and p.dtype.itemsize < 4:
            setattr(module, pname, torch.nn.Parameter(p.detach().float(), requires_grad=p.requires_grad))
