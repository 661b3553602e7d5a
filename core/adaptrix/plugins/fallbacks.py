"""The core's standard behaviour for each family hook a plugin leaves out.

A family plugin may implement only ``detect_family``; for every other
family-keyed hook its owner does not implement (or answers ``None`` to), the
plugin host calls the function of the same name here. No heavy imports at
module level: ``load_model`` imports transformers only when it runs.
"""

from __future__ import annotations

from typing import Any

from adaptrix.adapters.targets import ALL_LINEAR
from adaptrix.generation.tools.format import GENERIC, ToolFormat
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import think_spans
from adaptrix.types import ChatBehaviour, GenerationConfig, LoadedModel, LoadOptions


def load_model(family: str, model_id: str, options: LoadOptions) -> LoadedModel:
    """The shared loader, :func:`adaptrix.models.loading.load_causal_lm`, with no family extras."""
    return load_causal_lm(family, model_id, options)


def default_generation_config(family: str, config: dict[str, Any] | None) -> GenerationConfig:
    """No family opinion: the global defaults apply, with the config's own context length."""
    return GenerationConfig(context_length=context_length(config))


def target_modules(family: str, config: dict[str, Any] | None) -> list[str]:
    """Every Linear-like layer but the output head."""
    return [ALL_LINEAR]


def family_options(family: str) -> dict[str, str]:
    """No family options: ``Engine(...)`` takes only its own keyword arguments for this family."""
    return {}


def chat_behaviour(
    family: str, config: dict[str, Any] | None, template: str | None, family_options: dict[str, Any]
) -> ChatBehaviour:
    """The generic chat: a template that mentions ``<think>``/``</think>`` hides that span; nothing else.

    No thinking default (the template's own applies unless a call passes
    ``enable_thinking``), no further template variables, no end-of-turn token
    but the model's EOS.
    """
    spans = think_spans(template)
    return ChatBehaviour(thinking=bool(spans), hidden_spans=spans)


def tool_format(family: str, config: dict[str, Any] | None, template: str | None) -> ToolFormat:
    """The generic JSON format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, offered through
    the template when it takes ``tools``, else in the system prompt."""
    return GENERIC
