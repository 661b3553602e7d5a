"""adaptrix family plugin for Gemma 1 to 4 (text), RecurrentGemma and VaultGemma.

Gemma chat templates accept no ``system`` role: the engine reports that as a
clear error, or folds the system prompt into the first user turn when asked.
"""

from __future__ import annotations

from adaptrix import hookimpl
from adaptrix.models.loading import load_causal_lm
from adaptrix.models.modelconfig import context_length
from adaptrix.plugins.family import ATTENTION, GATED_MLP, claims, think_spans
from adaptrix.types import ChatBehaviour, GenerationConfig

FAMILY = "gemma"
#: Every model_type starting with one of these is this family's, whatever transformers adds.
PREFIXES = ("gemma",)
#: Gemma types the prefix misses: RecurrentGemma (Griffin: recurrent blocks between attention blocks) and
#: VaultGemma (Gemma trained with differential privacy); both use Gemma's tokenizer and turn format.
MODEL_TYPES = ("recurrent_gemma", "vaultgemma")
#: RecurrentGemma's recurrent blocks: their input and output projections.
RECURRENT = ["linear_x", "linear_y", "linear_out"]


@hookimpl
def families():
    return [FAMILY]


@hookimpl
def detect_family(model_id, config):
    return FAMILY if claims(model_id, config, MODEL_TYPES, id_keywords=("gemma",), prefixes=PREFIXES) else None


@hookimpl
def default_generation_config(family, config):
    # Gemma 3 model card: temperature 1.0, top_k 64, top_p 0.95.
    return GenerationConfig(
        max_new_tokens=512, temperature=1.0, top_p=0.95, top_k=64, context_length=context_length(config)
    )


@hookimpl
def target_modules(family, config):
    if (config or {}).get("model_type") == "recurrent_gemma":
        return ATTENTION + GATED_MLP + RECURRENT
    return ATTENTION + GATED_MLP


@hookimpl
def load_model(family, model_id, options):
    return load_causal_lm(family, model_id, options)


@hookimpl
def chat_behaviour(template):
    spans = think_spans(template)
    return ChatBehaviour(thinking=bool(spans), hidden_spans=spans, end_of_turn_tokens=("<end_of_turn>",))
