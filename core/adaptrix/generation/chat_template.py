"""Render a chat template string with jinja2, exactly as transformers renders it.

One formatting module for every backend: the transformers backend reads the
template from its tokenizer, the llama.cpp backend from GGUF metadata
(``tokenizer.chat_template``); both render here. The environment matches
transformers' ``apply_chat_template(..., tokenize=False)``: a sandboxed,
immutable jinja2 environment with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a pass-through ``{% generation %}`` block, a
``tojson`` filter that neither escapes HTML nor ASCII-encodes, and the globals
``raise_exception``, ``strftime_now``, ``dict`` and a namespace that refuses
underscore names. The special tokens (``bos_token``, ``eos_token``, ...) are
template variables, and the caller's keyword arguments override them.

A template that calls ``raise_exception`` (or fails otherwise) raises
:class:`ChatTemplateError`. Imports jinja2 only, never transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import attrs

from adaptrix.errors import ChatTemplateError

#: Names a message's reasoning may come under; templates read the first (transformers aliases them the same way).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@attrs.frozen
class ChatTemplate:
    """A chat template and the special tokens it is rendered with."""

    source: str
    #: ``{"bos_token": "<s>", "eos_token": "</s>", ...}``: the named special tokens as text.
    special_tokens: Mapping[str, str] = attrs.field(factory=dict, converter=lambda m: dict(m))
    #: Who the template belongs to, for error messages ("SmolLM2-135M-Instruct.Q4_1.gguf").
    name: str = "this model"

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for ``messages``; see :func:`render_chat_template`."""
        return render_chat_template(
            self.source,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
            tools=tools,
            documents=documents,
            name=self.name,
            **kwargs,
        )


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    name: str = "this model",
    **kwargs: Any,
) -> str:
    """``template`` rendered for ``messages`` as transformers' ``apply_chat_template(tokenize=False)`` renders it.

    ``kwargs`` become template variables (``enable_thinking=False``) and win over
    ``special_tokens`` of the same name. Raises :class:`ChatTemplateError` when
    the template does not compile or refuses the conversation; the message says
    which model's template and, for a refused system message, to drop ``system=``.
    """
    import jinja2

    if not messages:
        raise ChatTemplateError(f"the chat template of {name} got an empty conversation: pass at least one message")
    compiled = _compile(template, name)
    # transformers drops None-valued keys (OpenAI-style content=None) and aliases reasoning field names.
    chat = [_alias_reasoning({k: _plain(v) for k, v in dict(m).items() if v is not None}) for m in messages]
    variables = {**dict(special_tokens or {}), **_plain(kwargs)}
    try:
        return compiled.render(
            messages=chat,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as exc:  # raise_exception(), an undefined call, a sandbox refusal
        raise _refusal(exc, chat, name) from exc
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a template tripping on the data
        raise _refusal(exc, chat, name) from exc


def _refusal(exc: BaseException, chat: list[dict], name: str) -> ChatTemplateError:
    detail = f"{type(exc).__name__}: {exc}"
    if any(m.get("role") == "system" for m in chat):
        return ChatTemplateError(
            f"the chat template of {name} refuses this conversation, which has a system message ({detail}); "
            "drop system= (or put the instructions in the prompt itself)"
        )
    return ChatTemplateError(f"the chat template of {name} failed on this conversation ({detail})")


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value: Any) -> Any:
    """A copy of ``value`` made of plain JSON types, so the template never touches caller objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _compile(template: str, name: str):
    import jinja2

    try:
        return _compiled(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the chat template of {name} is not valid jinja2 (line {exc.lineno}: {exc.message}); "
            "fix the template or pass a model whose template loads"
        ) from exc


@lru_cache(maxsize=32)
def _compiled(template: str):
    return _environment().from_string(template)


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers uses it for assistant masks)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class TemplateDict:
        """``dict(...)`` in templates, without the class itself (no attribute escapes)."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """``namespace(...)`` that refuses underscore-prefixed attributes."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            values = dict(*args, **kwargs)
            for key in values:
                TemplateNamespace._check(key)
            jinja2.utils.Namespace.__init__(self, values)

        def __setitem__(self, key, value):
            TemplateNamespace._check(key)
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace (got {key!r})"
                )

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env
