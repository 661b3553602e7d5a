"""adaptrix family plugin for the Llama architecture.

Covers Llama 2, 3.x and 4 (text), Llama 3.2 Vision's language model, and the
many checkpoints built on the Llama architecture: SmolLM/SmolLM2, TinyLlama,
InternLM3, and vision-language checkpoints whose language model is a Llama
(LLaVA, Idefics3, SmolVLM, DeepSeek-VL, ...).
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import ATTENTION, GATED_MLP, claims, think_spans
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.types import ChatBehaviour, GenerationConfig

FAMILY = "llama"

#: Llama 3.x tool calls: ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``.
LLAMA3_JSON = ToolFormat(name="llama3-json", open_tag="<|python_tag|>", close_tag="", arguments_key="parameters",
                         bare_calls=True, padding="", parallel=False, separator="; ")
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("llama",)
#: Llama types the prefix misses: Llama 3.2 Vision (whose text model is ``MllamaForCausalLM``), and types
#: transformers runs with ``LlamaForCausalLM`` itself under their own config class (InternLM3, IQuest-Coder).
#: DiffLlama is left out: differential attention, a different architecture, not Meta's Llama.
MODEL_TYPES = ("mllama", "internlm3", "iquestcoder")


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, MODEL_TYPES, id_keywords=("llama", "smollm"), prefixes=PREFIXES) else None


@hookimpl
def default_generation_config(family, config):
    # Meta's generation_config.json for Llama 3.x: temperature 0.6, top_p 0.9.
    return GenerationConfig(max_new_tokens=512, temperature=0.6, top_p=0.9, context_length=context_length(config))


@hookimpl
def target_modules(family, config):
    # Llama 4's routed experts are fused parameters; its shared expert and dense
    # layers keep gate/up/down Linear layers, so the same names apply.
    return ATTENTION + GATED_MLP


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options)


@hookimpl
def chat_behaviour(template):
    # Llama 3 instruct turns end with <|eot_id|>, Llama 4 with <|eot|>; SmolLM2 speaks ChatML. Reasoning
    # fine-tunes (DeepSeek-R1-Distill-Llama) think in <think> spans their template mentions.
    spans = think_spans(template)
    return ChatBehaviour(
        thinking=bool(spans), hidden_spans=spans, end_of_turn_tokens=("<|eot_id|>", "<|eot|>", "<|im_end|>")
    )


@hookimpl
def tool_format(template):
    # Llama 3.1-3.3: a custom tool call is the bare JSON {"name": ..., "parameters": {...}} (the template's own
    # instructions), a built-in one follows <|python_tag|> (a special token that decoding drops); one call per
    # turn (the template refuses several).
    return LLAMA3_JSON
