"""Generation presets and the resolution order of sampling settings.

Order, highest first: explicit argument > task preset > family default (the
``default_generation_config`` hook) > :data:`GLOBAL_DEFAULTS`.
No torch here: ``adaptrix detect`` uses it.
"""

from __future__ import annotations

from adaptrix.errors import GenerationError
from adaptrix.types import GenerationConfig

#: OpenAI's range of ``presence_penalty`` and ``frequency_penalty``: [-PENALTY_LIMIT, PENALTY_LIMIT].
PENALTY_LIMIT = 2.0

GLOBAL_DEFAULTS = GenerationConfig(max_new_tokens=256, temperature=0.7, top_p=0.9, repetition_penalty=1.0)

TASK_PRESETS: dict[str, GenerationConfig] = {
    "general": GenerationConfig(),
    "chat": GenerationConfig(),
    "code": GenerationConfig(temperature=0.3, top_p=0.95),
    "math": GenerationConfig(temperature=0.1, top_p=0.9),
    "creative": GenerationConfig(temperature=0.9, top_p=0.95),
}


def task_preset(task_type: str | None) -> GenerationConfig:
    """The preset of a task type; ``None`` means no preset."""
    if task_type is None:
        return GenerationConfig()
    try:
        return TASK_PRESETS[task_type]
    except KeyError:
        raise GenerationError(
            f"unknown task_type {task_type!r}; choose one of {', '.join(TASK_PRESETS)}"
        ) from None


def resolve(
    explicit: GenerationConfig,
    task_type: str | None,
    family: GenerationConfig | None,
) -> GenerationConfig:
    """Merge the layers (argument > task > family > global) and validate the result."""
    merged = explicit.merged_over(task_preset(task_type)).merged_over(family or GenerationConfig())
    merged = merged.merged_over(GLOBAL_DEFAULTS)
    check(merged)
    return merged


def check(cfg: GenerationConfig) -> None:
    """Raise :class:`GenerationError` naming the field and value at fault."""
    if cfg.temperature is not None and cfg.temperature < 0:
        raise GenerationError(f"temperature must be >= 0 (0 means greedy), got {cfg.temperature}")
    if cfg.top_p is not None and not (0 < cfg.top_p <= 1):
        raise GenerationError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k is not None and cfg.top_k < 0:
        raise GenerationError(f"top_k must be >= 0, got {cfg.top_k}")
    if cfg.repetition_penalty is not None and cfg.repetition_penalty <= 0:
        raise GenerationError(f"repetition_penalty must be > 0, got {cfg.repetition_penalty}")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(cfg, name)
        if value is not None and not -PENALTY_LIMIT <= value <= PENALTY_LIMIT:
            raise GenerationError(f"{name} must be from -2 to 2 (OpenAI's range; 0 is off), got {value}")
    if cfg.stop is not None and any(not isinstance(s, str) or not s for s in cfg.stop):
        raise GenerationError(f"stop strings must be non-empty strings, got {list(cfg.stop)}")
