"""adaptrix family plugin for Mistral and Mixtral."""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import ATTENTION, GATED_MLP, claims, is_moe
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.types import GenerationConfig

FAMILY = "mistral"

#: Mistral's tool calls: ``[TOOL_CALLS]`` and a JSON list of calls.
MISTRAL = ToolFormat(name="mistral", open_tag="[TOOL_CALLS]", close_tag="", list_body=True, bare_calls=True,
                     padding=" ", separator=", ", short_ids=True)
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("mistral", "mixtral", "ministral")


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, id_keywords=("mistral", "mixtral"), prefixes=PREFIXES) else None


@hookimpl
def default_generation_config(family, config):
    # Mistral's guidance for its instruct models: temperature around 0.7, top_p 0.95.
    return GenerationConfig(max_new_tokens=512, temperature=0.7, top_p=0.95, context_length=context_length(config))


@hookimpl
def target_modules(family, config):
    # Mixtral's experts are fused 3-D parameters in transformers 5: attention only.
    return list(ATTENTION) if is_moe(config) else ATTENTION + GATED_MLP


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options)


@hookimpl
def tool_format(template):
    # Mistral v0.3+ / Nemo: [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]; the control token is dropped
    # by decoding, so the bare list at the start of an answer is read as the calls too.
    return MISTRAL
