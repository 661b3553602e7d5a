"""Which model modules an adapter's config targets, and which module a tensor key belongs to.

The one owner of these questions for validation (:mod:`.validate`) and direct
injection (:mod:`.inject`). Works on anything with a ``modules`` mapping of
name -> spec carrying ``kind`` (``linear``/``embedding``/``other``) and an
``output_name`` (a :class:`~.validate.ModuleIndex`).
"""

from __future__ import annotations

import re

#: The prefix peft writes before module names in adapter_model.safetensors.
KEY_PREFIX = "base_model.model."
_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")
_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector", ".base_layer.")


def matches(name: str, targets) -> bool:
    """peft's rule: a string is a full-match regex; a list matches a name or a ``.``-suffix of it."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def targeted_modules(index, cfg: dict) -> list[str]:
    """Names of the modules of ``index`` that an adapter config (``target_modules``, ``exclude_modules``,
    ``layers_to_transform``) puts LoRA on."""
    targets = cfg.get("target_modules")
    if targets is None:
        return []
    if isinstance(targets, str) and targets.lower() == "all-linear":
        out = [n for n, s in index.modules.items() if s.kind == "linear" and n != index.output_name]
    else:
        out = [n for n, s in index.modules.items() if s.kind in ("linear", "embedding") and matches(n, targets)]
    excl = cfg.get("exclude_modules")
    if excl:
        out = [n for n in out if not matches(n, excl)]
    layers = cfg.get("layers_to_transform")
    if layers is not None:
        wanted = {layers} if isinstance(layers, int) else set(layers)
        out = [n for n in out if (m := _LAYER_RE.search("." + n + ".")) is None or int(m.group(1)) in wanted]
    return out


def split_key(key: str) -> tuple[str, str]:
    """``base_model.model.X.lora_A.weight`` -> (``X``, ``lora_A.weight``)."""
    key = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
    for marker in _MARKERS:
        i = key.find(marker)
        if i >= 0:
            return key[:i], key[i + 1:]
    module, _, param = key.rpartition(".")
    return module, param
