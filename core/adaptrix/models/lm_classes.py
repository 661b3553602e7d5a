"""What the installed transformers can build as a causal LM, read without importing it.

``adaptrix detect`` and ``plugins list`` must not import transformers (seconds
of start-up), yet whether a ``model_type`` has a causal-LM class depends on the
installed version. This module reads ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` from
transformers' own source with :mod:`ast` (a literal, never executed) and caches
it. Tests check the result against the imported mapping.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

MAPPING = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"


@functools.lru_cache(maxsize=1)
def causal_lm_classes() -> dict[str, str]:
    """``model_type -> class name`` of every causal-LM class the installed transformers has.

    Empty when transformers is not installed or its source cannot be read.
    """
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    source = Path(list(spec.submodule_search_locations)[0]) / "models" / "auto" / "modeling_auto.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == MAPPING for t in node.targets):
            return _pairs(node.value)
    return {}


def _pairs(node: ast.expr) -> dict[str, str]:
    """The ``[("a", "B"), ...]`` list inside ``OrderedDict(...)``; tuples of names keep the first."""
    if isinstance(node, ast.Call) and node.args:
        node = node.args[0]
    out: dict[str, str] = {}
    for item in getattr(node, "elts", []):
        if not (isinstance(item, ast.Tuple) and len(item.elts) == 2):
            continue
        key, value = item.elts
        if isinstance(value, ast.Tuple) and value.elts:
            value = value.elts[0]
        if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
            out[str(key.value)] = str(value.value)
    return out


def text_only_class(model_type: str | None) -> str | None:
    """The text-only causal-LM class (``...ForCausalLM``) transformers has for ``model_type``."""
    cls = causal_lm_classes().get(model_type or "")
    return cls if cls and cls.endswith("ForCausalLM") else None
