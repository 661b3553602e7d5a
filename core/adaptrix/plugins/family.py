"""Small helpers for family plugin authors (no torch, no transformers)."""

from __future__ import annotations

from typing import Any, Iterable

from adaptrix.models import modelconfig


def claims(
    model_id: str,
    config: dict[str, Any] | None,
    model_types: Iterable[str] = (),
    id_keywords: Iterable[str] = (),
    *,
    prefixes: Iterable[str] = (),
) -> bool:
    """The usual ``detect_family`` rule.

    With a config: the model is one adaptrix can run as a causal LM (see
    :func:`adaptrix.models.modelconfig.is_causal_lm`: no encoder, reward head or
    vision-language model without a text-only class) and the model type it
    runs as (:func:`claimed_names`) is one of ``model_types`` or starts with
    one of ``prefixes``. Prefixes let a family follow the installed
    transformers (``qwen`` covers ``qwen3_next``); ``model_types`` lists the
    family's types that its prefixes miss (``mllama`` for ``llama``). Without
    a config: the lower-cased ``model_id`` contains one of ``id_keywords``.
    """
    if config is not None:
        if modelconfig.is_causal_lm(config) is False:
            return False
        types = set(model_types)
        prefixes = tuple(p.lower() for p in prefixes)
        return any(n in types or (prefixes and n.lower().startswith(prefixes)) for n in claimed_names(config))
    name = str(model_id).lower()
    return any(k in name for k in id_keywords)


def claimed_names(config: dict[str, Any]) -> list[str]:
    """The names a family recognises a config by: the model type adaptrix runs it as.

    - A vision-language checkpoint runs as the text-only causal LM inside it
      (:func:`adaptrix.models.modelconfig.text_model_type`): LLaVA's ``llama``,
      PaliGemma's ``gemma``, Kimi-K2.5's ``deepseek_v3``; the family of that
      language model owns it, whatever the wrapper is called.
    - Otherwise the config's ``model_type``; for a remote-code config
      (``auto_map``) its architecture names too (``QWenLMHeadModel``).
    """
    text = modelconfig.text_model_type(config)
    if text is not None:
        return [text]
    names = [str(config.get("model_type") or "")]
    if modelconfig.needs_remote_code(config):
        names += modelconfig.architectures(config)
    return [n for n in names if n]


def text_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The text part of a config (``text_config`` of multimodal models, else the config)."""
    config = config or {}
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) else config


def is_moe(config: dict[str, Any] | None) -> bool:
    """True when the config describes routed experts (fused 3-D expert weights in transformers 5)."""
    tc = text_config(config)
    return any(
        isinstance(tc.get(k), int) and tc.get(k) > 1
        for k in ("num_experts", "num_local_experts", "n_routed_experts")
    )


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
GATED_MLP = ["gate_proj", "up_proj", "down_proj"]


#: The tags reasoning models write their thought in (Qwen3, QwQ, DeepSeek-R1 and its distills, Phi-4-reasoning).
THINK = ("<think>", "</think>")


def think_spans(template: str | None) -> tuple[tuple[str, str], ...]:
    """``(THINK,)`` when the chat template mentions ``<think>`` or ``</think>``, else ``()``.

    A template that opens a thought for the model (``<think>\\n`` after the
    assistant's turn) or strips one from earlier turns (``content.split('</think>')``)
    belongs to a model that writes one: the span is hidden from answers.
    """
    return (THINK,) if template and any(tag in template for tag in THINK) else ()
