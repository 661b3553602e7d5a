"""Sampling settings: checking a call's explicit values and resolving them over the defaults.

Resolution order of a setting, highest first (see ``adaptrix.generation.defaults``):

1. the explicit argument of the call (``temperature=0.3``),
2. the task preset (``task_type="code"``; or the active adapter's declared task),
3. the family default (the plugin's ``default_generation_config`` hook),
4. the global default (:data:`adaptrix.generation.defaults.GLOBAL_DEFAULTS`).

``temperature == 0`` means greedy decoding.
"""

from __future__ import annotations

import math

from adaptrix.errors import GenerationError
from adaptrix.generation import defaults as generation_defaults
from adaptrix.types import GenerationConfig

#: Per-call keyword arguments that are sampling settings.
SETTING_NAMES = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")


#: Seeds are whole numbers in [0, 2**64) (what torch.manual_seed takes); the server's schema uses this too.
SEED_LIMIT = 2**64


def _number(name: str, value, kind=float):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenerationError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise GenerationError(f"{name} must be a finite number, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise GenerationError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def explicit_settings(
    *,
    max_new_tokens=None,
    max_length=None,
    temperature=None,
    top_p=None,
    top_k=None,
    repetition_penalty=None,
    stop=None,
    seed=None,
) -> GenerationConfig:
    """The caller's explicit settings as a config layer; bad values raise :class:`GenerationError`.

    ``max_length`` is the seed API's name for ``max_new_tokens`` (new tokens, not
    prompt + new tokens).
    """
    max_new_tokens = _number("max_new_tokens", max_new_tokens, int)
    max_length = _number("max_length", max_length, int)
    if max_length is not None:
        if max_new_tokens is not None and max_new_tokens != max_length:
            raise GenerationError(
                f"max_length={max_length} and max_new_tokens={max_new_tokens} disagree; max_length is the "
                "older name of max_new_tokens (new tokens), pass only one"
            )
        max_new_tokens = max_length
    seed = _number("seed", seed, int)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise GenerationError(f"seed must be a whole number from 0 to 2**64-1, got {seed}")
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not isinstance(stop, (list, tuple)):
        raise GenerationError(f"stop must be a string or a list of strings, got {stop!r}")
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=_number("temperature", temperature),
        top_p=_number("top_p", top_p),
        top_k=_number("top_k", top_k, int),
        repetition_penalty=_number("repetition_penalty", repetition_penalty),
        stop=stop,
        seed=seed,
    )
    generation_defaults.check(cfg)
    return cfg


def resolve_settings(
    explicit: GenerationConfig, task_type: str | None, family: GenerationConfig | None
) -> GenerationConfig:
    """explicit > task preset > family > global, validated."""
    return generation_defaults.resolve(explicit, task_type, family)


def is_greedy(cfg: GenerationConfig) -> bool:
    return not cfg.temperature  # 0 or None
