"""Example family plugin: StableLM, a family the adaptrix core has never heard of.

This is the complete plugin described in docs/writing-a-plugin.md. Without it,
StableLM models fall to the generic plugin; with it installed they get their
own family, defaults and LoRA targets, with no change to the core.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import ATTENTION, GATED_MLP, claims, think_spans
from adaptrix.types import ChatBehaviour, GenerationConfig

FAMILY = "stablelm"


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, ("stablelm",), ("stablelm",)) else None


@hookimpl
def default_generation_config(family, config):
    # Stability's model cards sample with temperature 0.7, top_p 0.95.
    return GenerationConfig(max_new_tokens=512, temperature=0.7, top_p=0.95, context_length=context_length(config))


@hookimpl
def target_modules(family, config):
    return ATTENTION + GATED_MLP


@hookimpl
def load_model(family, model_id, options):
    from adaptrix.models.loading import load_causal_lm  # heavy imports stay inside the hook

    return load_causal_lm(family, model_id, options)  # fix_tokenizer=... for a tokenizer's quirks


@hookimpl
def chat_behaviour(template):
    # StableLM 2 chat models speak ChatML: a turn ends with <|im_end|>, not the tokenizer's EOS.
    spans = think_spans(template)
    return ChatBehaviour(thinking=bool(spans), hidden_spans=spans, end_of_turn_tokens=("<|im_end|>",))
