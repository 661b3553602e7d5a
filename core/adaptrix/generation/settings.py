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
SETTING_NAMES = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed",
                 "presence_penalty", "frequency_penalty", "logit_bias")

#: OpenAI's range of a logit bias: [-BIAS_LIMIT, BIAS_LIMIT].
BIAS_LIMIT = 100.0


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
    presence_penalty=None,
    frequency_penalty=None,
    logit_bias=None,
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
        presence_penalty=_number("presence_penalty", presence_penalty),
        frequency_penalty=_number("frequency_penalty", frequency_penalty),
        logit_bias=_logit_bias(logit_bias),
    )
    generation_defaults.check(cfg)
    return cfg


def _logit_bias(value) -> tuple[tuple[int, float], ...] | None:
    """``{token_id: bias}`` (or ``(id, bias)`` pairs) checked: whole-number ids >= 0, finite biases in
    [-100, 100]. Ids are checked against the vocabulary when the request is prepared
    (:func:`check_logit_bias`)."""
    if value is None:
        return None
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise GenerationError(f"logit_bias must be a dict {{token_id: bias}}, got {value!r:.80}")
    out = {}
    for key, bias in pairs:
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise GenerationError(f"logit_bias keys must be token ids (whole numbers >= 0), got {key!r}")
        bias = _number(f"logit_bias[{key}]", bias)
        if bias is None or not -BIAS_LIMIT <= bias <= BIAS_LIMIT:
            raise GenerationError(f"logit_bias[{key}] must be a number from -100 to 100, got {bias!r}")
        out[int(key)] = bias
    return tuple(sorted(out.items())) or None


def check_logit_bias(cfg: GenerationConfig, vocabulary: int) -> None:
    """Every ``logit_bias`` id is one of the model's ``vocabulary`` token ids; else :class:`GenerationError`
    naming the id."""
    for token, _ in cfg.logit_bias or ():
        if not 0 <= token < vocabulary:
            raise GenerationError(f"logit_bias names token id {token}, outside the model's vocabulary of "
                                  f"{vocabulary} tokens (0..{vocabulary - 1})", param="logit_bias")


def has_logit_rules(cfg: GenerationConfig) -> bool:
    """Whether ``cfg`` sets a logit bias or a non-zero presence or frequency penalty."""
    return bool(cfg.logit_bias or cfg.presence_penalty or cfg.frequency_penalty)


def resolve_settings(
    explicit: GenerationConfig, task_type: str | None, family: GenerationConfig | None
) -> GenerationConfig:
    """explicit > task preset > family > global, validated."""
    return generation_defaults.resolve(explicit, task_type, family)


def is_greedy(cfg: GenerationConfig) -> bool:
    return not cfg.temperature  # 0 or None
