"""Value objects shared by the core and the plugins.

They are frozen ``attrs`` classes: plugins return them from hooks, the engine
combines them, nobody mutates them in place.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import attrs

#: Sentinel for "the argument was not given" (e.g. ``adapter``: use the active adapter).
UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()


def _opt_positive_int(instance, attribute, value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"GenerationConfig.{attribute.name} must be a positive integer, got {value!r}")


def _bias_pairs(value) -> tuple[tuple[int, float], ...] | None:
    if value is None:
        return None
    pairs = value.items() if isinstance(value, dict) else value
    return tuple(sorted((int(k), float(v)) for k, v in pairs)) or None


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
    #: OpenAI's penalties over the generated tokens (the prompt does not count), each in [-2, 2]: a token's
    #: logit loses ``presence_penalty`` once it has appeared and ``frequency_penalty`` per appearance.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: ``((token_id, bias), ...)`` sorted by id, each bias in [-100, 100], added to the logits before
    #: sampling (-100 bans a token, 100 all but forces it); a ``{id: bias}`` dict is taken too.
    logit_bias: tuple[tuple[int, float], ...] | None = attrs.field(default=None, converter=lambda v: _bias_pairs(v))

    def merged_over(self, lower: "GenerationConfig") -> "GenerationConfig":
        """Return a config with this layer's set fields on top of ``lower``'s."""
        values = {}
        for field in attrs.fields(GenerationConfig):
            mine = getattr(self, field.name)
            values[field.name] = mine if mine is not None else getattr(lower, field.name)
        return GenerationConfig(**values)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as a plain dict (for JSON and tables)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items() if v is not None}
        if self.logit_bias is not None:
            out["logit_bias"] = {str(k): v for k, v in self.logit_bias}  # JSON keys are strings (OpenAI's shape)
        return out


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
    #: The model's config as the core already read it (``adaptrix.models.source``); loaders use it instead of
    #: reading config.json again. ``None``: read it from ``model_id``.
    config: dict[str, Any] | None = None
    #: Where ``config`` came from (for error messages).
    config_source: str | None = None
    #: Show progress bars for long work (a GGUF's one-time conversion).
    progress: bool = True
    #: CPU threads for the backend (``None``: its default; torch's setting is process-wide).
    threads: int | None = None


def _span_pairs(value) -> tuple[tuple[str, str], ...]:
    pairs = tuple(tuple(p) for p in value)
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(t, str) and t for t in pair):
            raise ValueError(
                f"ChatBehaviour.hidden_spans must be (open, close) pairs of non-empty strings, got {pair!r}"
            )
    return pairs


def _token_names(value) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(t, str) and t for t in names):
        raise ValueError(f"ChatBehaviour.end_of_turn_tokens must be non-empty token strings, got {names!r}")
    return names


#: The chat-template variable a call's ``enable_thinking`` (and ``ChatBehaviour.thinking_default``) sets.
THINKING_SWITCH = "enable_thinking"


@attrs.frozen
class ChatBehaviour:
    """How a family's models chat, the same on every backend: what the ``chat_behaviour`` hook returns.

    The engine formats prompts with :attr:`template_kwargs`, cuts
    ``hidden_spans`` from returned text (unless ``show_thinking=True``) and ends
    generation at ``end_of_turn_tokens`` besides EOS. The default value is the
    behaviour of a model with no thought and no family opinion.
    """

    #: The model may write a thought before its answer, inside ``hidden_spans``.
    thinking: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: Whether a chat thinks when the call does not say: the template variable ``enable_thinking``
    #: (``THINKING_SWITCH``) gets this value. ``None``: the variable is not passed and the template's own
    #: default applies (a template with no switch: DeepSeek-R1 always thinks). A call's ``enable_thinking``
    #: always wins.
    thinking_default: bool | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bool))
    )
    #: ``(open, close)`` tag pairs whose content is kept out of returned text (``("<think>", "</think>")``).
    hidden_spans: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_span_pairs)
    #: Further chat-template variables the family passes (not the thinking switch: ``thinking_default``).
    chat_template_kwargs: dict[str, Any] = attrs.field(factory=dict, converter=lambda v: dict(v or {}))
    #: Tokens that end an assistant turn besides EOS (``<|im_end|>``, ``<|eot_id|>``); backends keep those
    #: in the model's vocabulary.
    end_of_turn_tokens: tuple[str, ...] = attrs.field(default=(), converter=_token_names)
    # Tool-call formats join here, as further fields of the family's answer (how the template takes tools, how
    # a call is found in the model's output); nothing reads tools yet.

    def __attrs_post_init__(self) -> None:
        if self.thinking_default is not None and not self.thinking:
            raise ValueError("ChatBehaviour.thinking_default is set but thinking is False: set thinking=True, or "
                             "leave thinking_default None for a model that does not think")
        if THINKING_SWITCH in self.chat_template_kwargs:
            raise ValueError(f"ChatBehaviour.chat_template_kwargs sets {THINKING_SWITCH!r}: give its default as "
                             "thinking_default instead (a call's enable_thinking overrides it)")

    @property
    def template_kwargs(self) -> dict[str, Any]:
        """The template variables a call starts from: ``chat_template_kwargs`` plus the thinking default."""
        kwargs = dict(self.chat_template_kwargs)
        if self.thinking_default is not None:
            kwargs[THINKING_SWITCH] = self.thinking_default
        return kwargs


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
    #: How the family's models chat: set by the backend from the family's ``chat_behaviour`` hook
    #: (:func:`adaptrix.plugins.family_chat.ask`), whatever ``load_model`` put here.
    chat: ChatBehaviour = attrs.field(factory=ChatBehaviour)

    @property
    def chat_template_kwargs(self) -> dict[str, Any]:
        """The family's chat-template variables (``chat.template_kwargs``; Qwen3: ``enable_thinking``)."""
        return self.chat.template_kwargs

    @property
    def hidden_spans(self) -> tuple[tuple[str, str], ...]:
        """``(open, close)`` tags whose content is hidden from returned text (``chat.hidden_spans``)."""
        return self.chat.hidden_spans

    @property
    def end_of_turn_tokens(self) -> tuple[str, ...]:
        """Tokens that end an assistant turn besides EOS (``chat.end_of_turn_tokens``)."""
        return self.chat.end_of_turn_tokens


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


class Hooks(Protocol):
    """What modules below the plugin host need of it: calling hooks.

    :class:`adaptrix.plugins.host.PluginHost` is the implementation; the engine,
    the CLI and the server pass theirs down, so nothing below the host reaches
    up for a global one.
    """

    def call_first(self, hook: str, exclude: Iterable[str] = (), **kwargs: Any) -> tuple[Any, str | None]:
        """The first non-``None`` answer and the plugin that gave it, or ``(None, None)``."""

    def call_all(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """``(plugin, answer)`` for every plugin that answered."""

    def call_family(self, hook: str, family: str, **kwargs: Any) -> tuple[Any, str]:
        """The answer of the plugin that owns ``family`` (or the fallback), and that plugin's name."""

