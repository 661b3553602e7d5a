"""Small helpers for family plugin authors (no torch, no transformers)."""

from __future__ import annotations

from typing import Any, Iterable

from . import modelconfig


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
    :func:`adaptrix.modelconfig.is_causal_lm`: no encoder, reward head or
    vision-language model without a text-only class) and its ``model_type``
    is one of ``model_types`` or starts with one of ``prefixes`` (so a family
    follows the installed transformers: ``qwen`` covers ``qwen3_next``). For a
    remote-code config (``auto_map``) an architecture name starting with a
    prefix counts too (``QWenLMHeadModel``). Without a config: the lower-cased
    ``model_id`` contains one of ``id_keywords``.
    """
    if config is not None:
        if modelconfig.is_causal_lm(config) is False:
            return False
        prefixes = tuple(p.lower() for p in prefixes)
        names = [str(config.get("model_type") or "").lower()]
        if modelconfig.needs_remote_code(config):
            names += [a.lower() for a in modelconfig.architectures(config)]
        own = str(config.get("model_type") or "")
        return own in set(model_types) or any(n.startswith(prefixes) for n in names if n and prefixes)
    name = str(model_id).lower()
    return any(k in name for k in id_keywords)


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
