"""One typed generation request: what ``generate``, ``stream`` and the batch path are asked to do.

``Engine.generate(prompt, **options)`` and its siblings build a
:class:`GenerationRequest` with :meth:`GenerationRequest.build`, the one place
that knows the options, checks them and names a bad one; the engine then works
on the typed record only.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from adaptrix.errors import GenerationError
from adaptrix.generation.grammar import Grammar
from adaptrix.generation.scoring import check_top
from adaptrix.generation.settings import SETTING_NAMES, explicit_settings
from adaptrix.generation.token_ids import is_token_ids
from adaptrix.generation.tools.messages import check_turn
from adaptrix.generation.tools.spec import ToolUse, check_tool_use
from adaptrix.types import UNSET, GenerationConfig

#: Request options besides the sampling settings (``generation.SETTING_NAMES`` and ``max_length``).
OPTIONS = ("task_type", "adapter", "system", "use_context", "conversation", "show_thinking", "enable_thinking",
           "chat_template_kwargs", "raw", "history", "logprobs", "trim", "grammar",
           "response_format", "json_schema", "tools", "tool_choice", "parallel_tool_calls", "prompt_message")
#: Options that give the grammar another way (mapped to ``grammar`` by :func:`build_grammar`).
GRAMMAR_OPTIONS = ("grammar", "response_format", "json_schema")
#: Options that become the request's :class:`~adaptrix.generation.tools.spec.ToolUse` (``tool_use``).
TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")


@attrs.frozen
class GenerationRequest:
    """A prompt and how to answer it.

    ``adapter``: a name, a list (several active together), ``None`` for the
    base model, or :data:`~adaptrix.types.UNSET` for the active adapters.
    ``settings`` holds only what the caller set (the explicit layer of the
    resolution order: explicit > task > family > global). ``history``: this
    request's earlier ``{"role", "content"}`` messages (user/assistant, and tool
    turns: assistant ``tool_calls``, ``role: "tool"``), used in place of a stored
    conversation and remembered nowhere.
    """

    #: Text; with ``raw=True`` also a tuple of token ids, fed to the model as they are.
    prompt: str | tuple[int, ...]
    settings: GenerationConfig = GenerationConfig()
    task_type: str | None = None
    adapter: Any = UNSET
    system: str | None = None
    use_context: bool | None = None
    conversation: str | None = None
    show_thinking: bool = False
    enable_thinking: bool | None = None
    chat_template_kwargs: dict[str, Any] = attrs.field(factory=dict, converter=lambda v: dict(v or {}))
    raw: bool = False
    history: tuple[dict[str, str], ...] = attrs.field(default=(), converter=lambda v: tuple(dict(m) for m in v or ()))
    #: Report each generated token's logprob with this many alternatives (0..20); ``None``: no logprobs.
    logprobs: int | None = None
    #: Strip the returned text's leading and trailing whitespace (``False``: the text exactly as generated).
    trim: bool = True
    #: Constrain the output (:class:`~adaptrix.generation.grammar.Grammar`); ``None``: free text.
    grammar: Grammar | None = None
    #: The tools offered and the choice (``tools=``, ``tool_choice=``, ``parallel_tool_calls=``); ``None``: none.
    tool_use: ToolUse | None = None
    #: The current message when it is a tool result, not the user's: ``{"role": "tool", "tool_call_id"}``
    #: (``prompt`` is its content); ``None``: a user message.
    prompt_message: dict[str, Any] | None = None

    @classmethod
    def build(cls, prompt: str | Sequence[int], *, what: str = "prompt", **options: Any) -> "GenerationRequest":
        """A checked request from ``generate``-style keyword arguments; a bad one raises :class:`GenerationError`.

        ``prompt`` may be a list of token ids with ``raw=True`` (checked against the vocabulary when formatted)."""
        if options.get("raw") and is_token_ids(prompt):
            if not prompt:
                raise GenerationError(f"{what} is an empty list of token ids; give at least one")
            prompt = tuple(int(i) for i in prompt)
        else:
            check_text(prompt, what, required=options.get("prompt_message") is None)  # a tool may return ""
        check_text(options.get("system"), "system")
        unknown = sorted(set(options) - set(OPTIONS) - set(SETTING_NAMES) - {"max_length"})
        if unknown:
            raise GenerationError(
                f"unknown generation argument(s) {', '.join(unknown)}; settings are "
                f"{', '.join(SETTING_NAMES)} and max_length; other options are {', '.join(OPTIONS)}"
            )
        settings = explicit_settings(**{k: v for k, v in options.items() if k not in OPTIONS})
        conversation = options.get("conversation")
        if conversation is not None and (not isinstance(conversation, str) or not conversation):
            raise GenerationError(f"conversation must be a non-empty name, got {conversation!r}")
        kwargs = options.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise GenerationError(f"chat_template_kwargs must be a dict, got {kwargs!r}")
        history = options.get("history")
        if history:
            options["history"] = check_history(history)
            if conversation is not None or options.get("use_context"):
                raise GenerationError("history= gives this request's earlier messages; it cannot be combined with "
                                      "conversation= or use_context=True (a stored conversation)")
        if options.get("logprobs") is not None:
            check_top(options["logprobs"], "logprobs")
        grammar = build_grammar(**{k: options.pop(k) for k in GRAMMAR_OPTIONS if k in options})
        tool_use = options.get("tools")
        if not isinstance(tool_use, ToolUse):
            tool_use = check_tool_use(options.get("tools"), options.get("tool_choice"),
                                      options.get("parallel_tool_calls"))
        current = options.get("prompt_message")
        if current is not None:
            current = check_turn({**current, "content": prompt}, "prompt_message")
            current.pop("content")
        return cls(prompt, settings, grammar=grammar, tool_use=tool_use, prompt_message=current,
                   **{k: v for k, v in options.items() if k in OPTIONS and k not in TOOL_OPTIONS + ("prompt_message",)})


def build_grammar(grammar: Grammar | None = None, response_format: Any = None,
                  json_schema: Any = None) -> Grammar | None:
    """The request's :class:`Grammar` from whichever one of ``grammar=``, ``response_format=`` (OpenAI's dict)
    or ``json_schema=`` (a schema dict or JSON text) was given; :class:`GenerationError` for two or a bad one."""
    given = [k for k, v in (("grammar", grammar), ("response_format", response_format), ("json_schema", json_schema))
             if v is not None]
    if len(given) > 1:
        raise GenerationError(f"{' and '.join(given)} both constrain the output; give one of them")
    if grammar is not None and not isinstance(grammar, Grammar):
        raise GenerationError(f"grammar must be an adaptrix Grammar (Grammar.json_schema(...), ...), got {grammar!r}")
    if response_format is not None:
        return Grammar.from_response_format(response_format)
    if json_schema is not None:
        if not isinstance(json_schema, (dict, str)):
            raise GenerationError(f"json_schema must be a JSON schema (a dict or its JSON text), got "
                                  f"{type(json_schema).__name__}")
        return Grammar.json_schema(json_schema)
    return grammar


def build_batch(prompts: Sequence[str], row_adapters: Sequence[str | None] | None,
                **options: Any) -> tuple[list[GenerationRequest], list[str | None] | None]:
    """The checked requests of a batch (``generate_batch``) and the adapter of each row (``None``: all rows
    use the active adapters). Prompts are independent: options that name a conversation or one adapter
    for the call are refused."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise GenerationError("generate_batch takes a list of prompts; use generate() for a single one")
    for key in ("adapter", "use_context", "conversation", "history"):
        if key in options:
            raise GenerationError(f"generate_batch takes no {key}= (prompts are independent; use adapters=)")
    if not prompts:
        return [], None
    requests = [GenerationRequest.build(p, what=f"prompts[{i}]", use_context=False, **options)
                for i, p in enumerate(prompts)]
    if row_adapters is not None and (isinstance(row_adapters, str) or len(row_adapters) != len(prompts)):
        raise GenerationError(
            f"adapters has {len(row_adapters)} entries for {len(prompts)} prompts; give one per prompt"
        )
    return requests, list(row_adapters) if row_adapters is not None else None


def check_history(history) -> list[dict[str, Any]]:
    """``history``: a list of ``{"role": "user" | "assistant", "content": str}`` and tool turns (an assistant
    message with ``tool_calls``, a ``role: "tool"`` result: :func:`adaptrix.generation.tools.messages.check_turn`); else
    :class:`GenerationError`. Returns the messages, tool calls' arguments as JSON text."""
    if isinstance(history, (str, dict)) or not isinstance(history, (list, tuple)):
        raise GenerationError(f"history must be a list of {{'role', 'content'}} messages, got {type(history).__name__}")
    out = []
    for i, m in enumerate(history):
        if isinstance(m, dict) and (m.get("role") == "tool" or (m.get("role") == "assistant" and m.get("tool_calls"))):
            out.append(check_turn(m, f"history[{i}]"))
            continue
        out.append(m)
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise GenerationError(f"history[{i}] must be a {{'role': 'user' or 'assistant', 'content': text}} "
                                  f"message, got {m!r}")
        check_text(m.get("content"), f"history[{i}]['content']", required=False)
        if m.get("content") is None:
            raise GenerationError(f"history[{i}] has no 'content'")
    return out


def check_text(text, what: str, *, required: bool = False) -> None:
    """Text a tokenizer can take: a string, valid Unicode (no lone surrogate), non-blank when ``required``."""
    if text is None and not required:
        return
    if not isinstance(text, str):
        raise GenerationError(f"{what} must be a string, got {type(text).__name__}")
    if required and not text.strip():
        raise GenerationError(f"{what} is empty; give the model some text to answer")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GenerationError(
            f"{what} holds {text[exc.start:exc.end]!r} at character {exc.start}, a lone UTF-16 surrogate that is "
            "not text (a badly decoded emoji?); decode the input as UTF-8 and try again"
        ) from None
