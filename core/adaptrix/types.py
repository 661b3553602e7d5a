"""Value objects shared by the core and the plugins.

They are frozen ``attrs`` classes: plugins return them from hooks, the engine
combines them, nobody mutates them in place.
"""

from __future__ import annotations

from typing import Any

import attrs

#: Sentinel for "the argument was not given" (e.g. ``adapter``: use the active adapter).
UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()


def _opt_positive_int(instance, attribute, value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"GenerationConfig.{attribute.name} must be a positive integer, got {value!r}")


@attrs.frozen
class GenerationConfig:
    """Sampling settings. ``None`` means "not set here": a lower layer decides.

    Layers are combined with :meth:`merged_over`; see ``adaptrix.generation``
    for the resolution order (argument > task preset > family > global).
    """

    max_new_tokens: int | None = attrs.field(default=None, validator=_opt_positive_int)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    #: Tokens the model can attend to; read from the model's own config.
    context_length: int | None = attrs.field(default=None, validator=_opt_positive_int)
    stop: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple([v] if isinstance(v, str) else v)
    )
    seed: int | None = None

    def merged_over(self, lower: "GenerationConfig") -> "GenerationConfig":
        """Return a config with this layer's set fields on top of ``lower``'s."""
        values = {}
        for field in attrs.fields(GenerationConfig):
            mine = getattr(self, field.name)
            values[field.name] = mine if mine is not None else getattr(lower, field.name)
        return GenerationConfig(**values)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as a plain dict (for JSON and tables)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items() if v is not None}


@attrs.frozen
class LoadOptions:
    """How the user asked for the model to be loaded."""

    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    #: A ``.gguf`` file inside ``model_id`` (a folder), when loading from GGUF.
    gguf_file: str | None = None
    #: Extra keyword arguments passed through to ``from_pretrained``.
    extra: dict[str, Any] = attrs.field(factory=dict)
    #: Options only a family plugin understands (e.g. qwen's ``enable_thinking``).
    family_options: dict[str, Any] = attrs.field(factory=dict)
    #: The model's config as the core already read it (``adaptrix.source``); loaders use it instead of
    #: reading config.json again. ``None``: read it from ``model_id``.
    config: dict[str, Any] | None = None
    #: Where ``config`` came from (for error messages).
    config_source: str | None = None
    #: Show progress bars for long work (a GGUF's one-time conversion).
    progress: bool = True
    #: CPU threads for the backend (``None``: its default; torch's setting is process-wide).
    threads: int | None = None


@attrs.frozen
class LoadedModel:
    """What ``load_model`` returns: a ready model and its tokenizer."""

    model: Any
    tokenizer: Any
    family: str
    model_id: str
    config: dict[str, Any] = attrs.field(factory=dict)
    #: Free-form notes from the plugin (tokenizer fixes it applied, ...).
    notes: tuple[str, ...] = ()
    #: Family-specific chat-template keyword arguments (e.g. ``enable_thinking``).
    chat_template_kwargs: dict[str, Any] = attrs.field(factory=dict)
    #: Pairs of (open, close) tags whose content is hidden from returned text.
    hidden_spans: tuple[tuple[str, str], ...] = ()
    #: Tokens that end an assistant turn besides EOS (``<|im_end|>``, ``<|eot_id|>``).
    end_of_turn_tokens: tuple[str, ...] = ()


@attrs.frozen
class Detection:
    """The answer of ``adaptrix detect``: who claims a model and what it knows."""

    model_id: str
    family: str
    plugin: str
    model_type: str | None
    architecture: str | None
    context_length: int | None
    generation: GenerationConfig
    target_modules: tuple[str, ...]
    config_source: str | None
    warnings: tuple[str, ...] = ()
    #: Family hooks answered by the core's standard behaviour, not the plugin.
    fallback_hooks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False)
        d["generation"] = self.generation.as_dict()
        d["target_modules"] = list(self.target_modules)
        d["warnings"] = list(self.warnings)
        d["fallback_hooks"] = list(self.fallback_hooks)
        return d
