"""Turn a plugin's LoRA target names into names that exist in a loaded model."""

from __future__ import annotations

from .errors import AdapterError

ALL_LINEAR = "all-linear"


def linear_leaf_names(model) -> list[str]:
    """Leaf names of every ``nn.Linear`` in the model except the output head."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
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
