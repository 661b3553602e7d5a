"""adaptrix family plugin for DeepSeek: V2, V3, V3.2 (multi-head latent attention) and V4.

MLA replaces q/k/v with low-rank projections: ``q_a_proj``/``q_b_proj`` (or
``q_proj`` when ``q_lora_rank`` is null), ``kv_a_proj_with_mqa`` and
``kv_b_proj``. Routed experts are fused 3-D parameters in transformers 5; the
dense layers and shared experts keep gate/up/down Linear layers. DeepSeek-R1
(a V3 checkpoint) thinks in ``<think>...</think>``, hidden from answers.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import GATED_MLP, claims, text_config, think_spans
from adaptrix.types import ChatBehaviour, GenerationConfig

from adaptrix_deepseek.tool_calls import DeepSeekToolFormat

FAMILY = "deepseek"

DEEPSEEK = DeepSeekToolFormat()
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("deepseek",)


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, id_keywords=("deepseek-v2", "deepseek-v3"), prefixes=PREFIXES) else None


@hookimpl
def default_generation_config(family, config):
    # DeepSeek's usage recommendations: temperature 0.6, top_p 0.95.
    return GenerationConfig(max_new_tokens=1024, temperature=0.6, top_p=0.95, context_length=context_length(config))


@hookimpl
def target_modules(config):
    tc = text_config(config)
    kind = tc.get("model_type") or (config or {}).get("model_type")
    mlp = GATED_MLP if (tc.get("first_k_dense_replace") or tc.get("n_shared_experts")) else []
    if kind == "deepseek_v4":
        # V4 compresses K and V into one projection and factors the output projection.
        return ["q_a_proj", "q_b_proj", "kv_proj", "o_a_proj", "o_b_proj"] + mlp
    if kind in ("deepseek_v2", "deepseek_v3", "deepseek_v32"):
        query = ["q_a_proj", "q_b_proj"] if tc.get("q_lora_rank") else ["q_proj"]
        return query + ["kv_a_proj_with_mqa", "kv_b_proj", "o_proj"] + mlp
    return None  # a layout this plugin does not know (the remote-code DeepSeek V1 'deepseek'): all-linear


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options)


@hookimpl
def chat_behaviour(template):
    # R1 and V3 share the deepseek_v3 architecture: only the template tells the reasoner, which strips
    # earlier thoughts at '</think>' (and, in the updated templates, opens '<think>\n' for the answer).
    # The template has no thinking switch: R1 always thinks. Turns end with EOS (<｜end▁of▁sentence｜>).
    spans = think_spans(template)
    return ChatBehaviour(thinking=bool(spans), hidden_spans=spans)


@hookimpl
def tool_format(template):
    # DeepSeek V3/R1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name + fenced JSON
    # arguments (adaptrix_deepseek.tool_calls).
    return DEEPSEEK
