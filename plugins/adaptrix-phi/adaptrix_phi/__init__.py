"""adaptrix family plugin for Microsoft Phi: phi-1/1.5/2, Phi-3/3.5/4-mini and PhiMoE.

Phi-2 names its projections ``q_proj, k_proj, v_proj, dense, fc1, fc2``;
Phi-3 fuses them into ``qkv_proj`` and ``gate_up_proj``.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length, text_model_type
from adaptrix.plugins.family import ATTENTION, claims, think_spans
from adaptrix.types import ChatBehaviour, GenerationConfig

from adaptrix_phi.tool_calls import Phi4ToolFormat

FAMILY = "phi"

PHI4 = Phi4ToolFormat()
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("phi",)


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, id_keywords=("phi-", "/phi"), prefixes=PREFIXES) else None


@hookimpl
def default_generation_config(family, config):
    return GenerationConfig(max_new_tokens=512, temperature=0.7, top_p=0.85, context_length=context_length(config))


@hookimpl
def target_modules(family, config):
    # A vision-language checkpoint (LLaVA on Phi-3) runs as its language model: name that model's layers.
    model_type = text_model_type(config) or (config or {}).get("model_type")
    if model_type == "phi":
        return ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    if model_type == "phimoe":
        return list(ATTENTION)  # experts are fused 3-D parameters in transformers 5
    return ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options)


@hookimpl
def chat_behaviour(template):
    # Phi-3 chat turns end with <|end|>, which is not the tokenizer's EOS; Phi-4-reasoning thinks in <think>.
    spans = think_spans(template)
    return ChatBehaviour(thinking=bool(spans), hidden_spans=spans, end_of_turn_tokens=("<|end|>",))


@hookimpl
def tool_format(template):
    # Phi-4-mini: <|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|> (special tokens, dropped by
    # decoding: a bare list at the start is read as the calls); its template takes the tools as a JSON string
    # in the system message's "tools" field, not as tools=.
    return PHI4
