"""Small helpers for family plugin authors (no torch, no transformers)."""

from __future__ import annotations

from typing import Any, Iterable

from . import modelconfig


def claims(
    model_id: str,
    config: dict[str, Any] | None,
    model_types: Iterable[str],
    id_keywords: Iterable[str] = (),
) -> bool:
    """The usual ``detect_family`` rule.

    With a config: its ``model_type`` is one of ``model_types`` and it is not an
    encoder or a classification/reward head. Without one: the lower-cased
    ``model_id`` contains one of ``id_keywords``.
    """
    if config is not None:
        return config.get("model_type") in set(model_types) and not modelconfig.is_non_generative_head(config)
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
