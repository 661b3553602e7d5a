"""adaptrix family plugin for Qwen2, Qwen2.5, Qwen3 and their MoE variants.

Qwen3 chat templates think inside ``<think>...</think>``: the plugin exposes
``enable_thinking`` (``LoadOptions.family_options`` or per call) and hides the
span from returned text unless the caller asks for it.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.family import ATTENTION, GATED_MLP, claims, is_moe, text_config
from adaptrix.modelconfig import context_length
from adaptrix.types import GenerationConfig

FAMILY = "qwen"
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("qwen",)
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
    from adaptrix.loading import load_causal_lm
    from adaptrix.modelconfig import load_config

    config, _ = load_config(model_id, options.revision)
    thinking = config.get("model_type") in THINKING_TYPES
    kwargs = {}
    if thinking:
        kwargs["enable_thinking"] = bool(options.family_options.get("enable_thinking", False))
    return load_causal_lm(
        family, model_id, options,
        fix_tokenizer=_fix_tokenizer,
        chat_template_kwargs=kwargs,
        hidden_spans=(("<think>", "</think>"),) if thinking else (),
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
