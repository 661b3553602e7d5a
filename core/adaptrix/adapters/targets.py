"""Which layers LoRA can target, and turning a plugin's target names into real ones.

:func:`linear_features` is the one answer to "is this layer a LoRA Linear
target": ``torch.nn.Linear`` and transformers' ``Conv1D`` (GPT-2 style, weight
stored transposed), the layers peft's ``all-linear`` adapts. Adapter
validation (``adapters/validate.py``) calls it too.
"""

from __future__ import annotations

from adaptrix.errors import AdapterError

ALL_LINEAR = "all-linear"


def linear_features(module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a Linear-like LoRA target, else ``None``."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if isinstance(module, Conv1D):
        rows, cols = module.weight.shape  # Conv1D keeps the weight as (in, out)
        return int(rows), int(cols)
    return None


def linear_leaf_names(model) -> list[str]:
    """Leaf names of every Linear-like layer (see :func:`linear_features`) except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if module is not head and linear_features(module) is not None:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_target_modules(model, targets: list[str] | tuple[str, ...]) -> list[str]:
    """Expand ``all-linear`` and check every name exists as a Linear leaf in ``model``."""
    available = linear_leaf_names(model)
    if list(targets) == [ALL_LINEAR]:
        return available
    missing = [t for t in targets if t not in available]
    if missing:
        raise AdapterError(
            f"target modules {missing} do not exist in {type(model).__name__}; "
            f"its Linear layers are: {', '.join(available)}"
        )
    return list(targets)
