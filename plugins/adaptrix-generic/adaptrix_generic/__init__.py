"""adaptrix fallback plugin: any transformers causal LM no family plugin claims.

It answers ``detect_family`` last (``trylast``), and only for configs whose
architecture is a causal LM head. Its LoRA targets are ``["all-linear"]``:
every Linear layer but the output head, expanded against the loaded model by
:func:`adaptrix.adapters.targets.resolve_target_modules`.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length, is_causal_lm
from adaptrix.types import GenerationConfig

FAMILY = "generic"


@hookimpl
def families():
    return [FAMILY]


@hookimpl(trylast=True)
def detect_family(model_id, config):
    return FAMILY if config is not None and is_causal_lm(config) else None


@hookimpl
def default_generation_config(family, config):
    return GenerationConfig(context_length=context_length(config))


@hookimpl
def target_modules(family, config):
    return ["all-linear"]


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options)
