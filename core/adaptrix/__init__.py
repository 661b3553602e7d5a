"""adaptrix: run any open causal LM with any stack of LoRA adapters.

Importing ``adaptrix`` is cheap: torch, transformers and peft are imported
only when a model is loaded. ``Engine`` is resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptrix.errors import AdaptrixError
from adaptrix.generation.tools import ToolCall, ToolFormat
from adaptrix.plugins.hookspecs import hookimpl
from adaptrix.types import ChatBehaviour, Detection, GenerationConfig, LoadedModel, LoadOptions

__version__ = "0.1.0"

__all__ = [
    "AdaptrixError",
    "ChatBehaviour",
    "Detection",
    "Engine",
    "GenerationConfig",
    "LoadOptions",
    "LoadedModel",
    "ToolCall",
    "ToolFormat",
    "ModularAdaptrixEngine",
    "__version__",
    "detect",
    "hookimpl",
]

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.engine import Engine, ModularAdaptrixEngine
    from adaptrix.plugins.detection import detect


def __getattr__(name: str):
    if name in ("Engine", "ModularAdaptrixEngine"):
        from adaptrix import engine

        return getattr(engine, name)
    if name == "detect":
        from adaptrix.plugins.detection import detect

        return detect
    raise AttributeError(f"module 'adaptrix' has no attribute {name!r}")
