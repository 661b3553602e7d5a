"""adaptrix family plugin for Qwen2, Qwen2.5, Qwen3 and their MoE variants.

Qwen3 chat templates think inside ``<think>...</think>``: the plugin exposes
``enable_thinking`` (a family option, or per call) and hides the span from
returned text unless the caller asks for it. Qwen2-architecture reasoning
models (QwQ, DeepSeek-R1-Distill-Qwen) think in the same span, which their
template mentions.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import ATTENTION, GATED_MLP, THINK, claims, is_moe, text_config, think_spans
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.types import THINKING_SWITCH, ChatBehaviour, GenerationConfig

FAMILY = "qwen"

#: Qwen's tool calls (the hermes format): one ``<tool_call>`` block per call.
HERMES = ToolFormat(name="hermes", open_tag="<tool_call>", close_tag="</tool_call>")
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("qwen",)
#: Hybrid thinkers: the template's ``enable_thinking`` switches thinking on and off (off unless asked for).
THINKING_TYPES = ("qwen3", "qwen3_moe")


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, id_keywords=("qwen",), prefixes=PREFIXES) else None


@hookimpl
def default_generation_config(family, config):
    # Qwen model cards: temperature 0.7, top_p 0.8-0.9, top_k 20, repetition_penalty 1.05.
    return GenerationConfig(
        max_new_tokens=1024, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.05,
        context_length=context_length(config),
    )


@hookimpl
def target_modules(family, config):
    tc = text_config(config)
    if is_moe(config):
        # Routed experts are fused 3-D parameters in transformers 5, not Linear layers;
        # Qwen2-MoE's shared expert is a plain gated MLP.
        shared = GATED_MLP if tc.get("shared_expert_intermediate_size") else []
        return ATTENTION + shared
    return ATTENTION + GATED_MLP


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options, fix_tokenizer=_fix_tokenizer)


@hookimpl
def chat_behaviour(config, template, family_options):
    # Qwen3 (a hybrid thinker: thinking off unless the user or the call asks), else a Qwen2-architecture
    # reasoning model whose template opens or strips a <think> span (QwQ, DeepSeek-R1-Distill-Qwen): it
    # always thinks, the template has no switch. Turns end with <|im_end|> (ChatML).
    hybrid = (config or {}).get("model_type") in THINKING_TYPES or THINKING_SWITCH in (template or "")
    spans = (THINK,) if hybrid else think_spans(template)
    return ChatBehaviour(
        thinking=bool(spans),
        thinking_default=bool(family_options.get("enable_thinking", False)) if hybrid else None,
        hidden_spans=spans,
        end_of_turn_tokens=("<|im_end|>",),
    )


@hookimpl
def family_options(family):
    return {
        "enable_thinking": "Qwen3: let the chat template open a <think> block by default "
        "(per call: generate(..., enable_thinking=...))",
    }


def _fix_tokenizer(tokenizer, config):
    # Qwen base tokenizers ship without a pad token; <|endoftext|> is the documented one,
    # and it must not be <|im_end|>, or padded batches would stop turns early.
    if tokenizer.pad_token in (None, "<|im_end|>") and "<|endoftext|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|endoftext|>"
        return ["pad token set to <|endoftext|>"]
    return []


@hookimpl
def tool_format(template):
    # Qwen2.5 and Qwen3 write hermes calls, <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, and
    # their templates take tools=, tool_calls and role "tool".
    return HERMES
