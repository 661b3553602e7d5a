"""Chat formatting, history trimming and named conversations.

- Formatting renders the tokenizer's own chat template with
  :mod:`adaptrix.generation.chat_template` (jinja2, as transformers renders it, so both
  backends format identically and the llama.cpp path imports no transformers),
  with the tokenizer's special tokens as template variables and the family's
  template kwargs (Qwen3 ``enable_thinking``) merged with the call's. A
  tokenizer without a template gets :func:`plain_format`, a plain
  ``User:/Assistant:`` transcript; ``"\\nUser:"`` then acts as a stop string.
- Training formats its samples here too (:func:`split_answer`), so an adapter
  is trained on exactly the prompt the engine serves it.
- A template that raises on a system message is a :class:`ChatTemplateError`
  naming the model and saying to drop ``system=``.
- History is trimmed oldest turn first until the prompt fits in
  ``context_length - max_new_tokens``; the current message is never cut, and a
  current message that alone does not fit is a :class:`ContextOverflowError`.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from adaptrix.errors import ChatTemplateError, ContextOverflowError
from adaptrix.generation.chat_template import ChatTemplate
from adaptrix.generation.request import GenerationRequest

DEFAULT_CONVERSATION = "default"
#: Stop string added automatically when the plain fallback format is used.
PLAIN_STOP = "\nUser:"


@attrs.define
class Conversation:
    """A named, mutable history of ``{"role", "content"}`` turns (system prompt kept apart)."""

    name: str = DEFAULT_CONVERSATION
    system: str | None = None
    messages: list[dict[str, str]] = attrs.field(factory=list)

    def add_turn(self, user: str, assistant: str) -> None:
        self.messages.append({"role": "user", "content": user})
        self.messages.append({"role": "assistant", "content": assistant})

    def turns(self) -> list[list[dict[str, str]]]:
        """History grouped into turns (a user message and the replies that follow it)."""
        groups: list[list[dict[str, str]]] = []
        for m in self.messages:
            if m["role"] == "user" or not groups:
                groups.append([])
            groups[-1].append(m)
        return groups

    def clear(self) -> None:
        self.messages.clear()
        self.system = None


@attrs.frozen
class Prompt:
    """A formatted prompt ready for the model."""
    text: str
    input_ids: tuple[int, ...]
    messages: tuple[dict[str, str], ...]
    trimmed_turns: int
    templated: bool
    #: Stop strings the format itself needs (the plain fallback's ``"\\nUser:"``).
    stops: tuple[str, ...] = ()


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_format(messages: list[dict[str, str]]) -> str:
    """The fallback transcript for tokenizers without a chat template."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    lines = [f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def special_tokens(tokenizer) -> dict[str, Any]:
    """The template variables a tokenizer's special tokens become, as transformers passes them.

    ``apply_chat_template`` renders with ``tokenizer.special_tokens_map`` (the
    named tokens: ``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``,
    ...; in transformers 5 without the extra special tokens); the llama.cpp
    codec exposes the same property. Token objects become their text.
    """
    raw = getattr(tokenizer, "special_tokens_map", None) or {}
    return {
        key: [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
        for key, value in dict(raw).items()
        if value is not None
    }


def template_source(tokenizer, model_name: str = "this model") -> str | None:
    """The tokenizer's chat template text (the ``"default"`` one of a named set), or ``None``."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        if "default" not in source:
            raise ChatTemplateError(
                f"{model_name} has several chat templates ({', '.join(sorted(source))}) and none named 'default'; "
                "set tokenizer.chat_template to the one to use"
            )
        source = source["default"]
    return source or None


def chat_template(tokenizer, model_name: str = "this model"):
    """The tokenizer's chat template bound to its special tokens (a :class:`ChatTemplate`), or ``None``."""
    source = template_source(tokenizer, model_name)
    if source is None:
        return None
    return ChatTemplate(source, special_tokens(tokenizer), name=model_name)


def render(
    tokenizer, messages: list[dict[str, str]], template_kwargs: dict[str, Any], model_name: str,
    *, add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` (by default ending with the assistant's turn opening).

    Equal to ``tokenizer.apply_chat_template(messages, tokenize=False, ...)``;
    a template that refuses the conversation (a system message, say) raises
    :class:`ChatTemplateError` naming the model and what to do.
    """
    template = chat_template(tokenizer, model_name)
    if template is None:
        return plain_format(messages)
    return template.render(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)


def plain_answer(content: str, eos_token: str | None) -> str:
    """How an answer continues a :func:`plain_format` prompt, ended by EOS (else a newline)."""
    return f" {content}" + (eos_token or "\n")


def split_answer(
    tokenizer, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None,
    model_name: str = "this model",
) -> tuple[str, str]:
    """``(prompt, answer)`` for a conversation ending in the assistant's answer (what training learns).

    ``prompt`` is exactly what :func:`build_prompt` serves for ``messages[:-1]``;
    ``answer`` is the text after it: the template's rendering of the last turn
    (with its end-of-turn marker), or :func:`plain_answer`.
    """
    kwargs = dict(template_kwargs or {})
    prompt = render(tokenizer, messages[:-1], kwargs, model_name)
    content = messages[-1]["content"]
    if not has_template(tokenizer):
        return prompt, plain_answer(content, tokenizer.eos_token)
    full = render(tokenizer, messages, kwargs, model_name, add_generation_prompt=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt):]
    # Templates that render the last turn differently (e.g. strip thinking): answer + end of turn.
    return prompt, content + (tokenizer.eos_token or "")


def tokenize(tokenizer, text: str, templated: bool) -> list[int]:
    # Templates already write BOS and the special tokens; the plain format needs the tokenizer's own.
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def build_prompt(
    tokenizer,
    prompt: str,
    *,
    history: list[list[dict[str, str]]] = (),
    system: str | None = None,
    template_kwargs: dict[str, Any] | None = None,
    budget: int | None = None,
    model_name: str = "this model",
    max_new_tokens: int | None = 0,
    context_length: int | None = None,
    prompt_message: dict[str, Any] | None = None,
    tools: Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], dict[str, Any]]] | None = None,
) -> Prompt:
    """Format ``history + prompt``, dropping the oldest turns until it fits in ``budget`` tokens.

    ``max_new_tokens`` and ``context_length`` only word the error; ``max_new_tokens=None`` (the caller asked
    for no number of new tokens) words it without one. ``prompt_message``: the current message's fields
    when it is not the user's (a tool result); ``tools(messages)``: the messages and extra template
    variables a conversation with tools renders as (the family's tool format).
    """
    templated = has_template(tokenizer)
    kwargs = dict(template_kwargs or {})
    head = [{"role": "system", "content": system}] if system else []
    current = [{**(prompt_message or {"role": "user"}), "content": prompt}]
    turns = list(history)

    def attempt(dropped: int):
        messages = head + [m for t in turns[dropped:] for m in t] + current
        if tools is not None:
            messages, extra = tools(messages)
            text = render(tokenizer, messages, {**kwargs, **extra}, model_name)
        else:
            text = render(tokenizer, messages, kwargs, model_name)
        ids = tokenize(tokenizer, text, templated)
        prompt_obj = Prompt(
            text=text,
            input_ids=tuple(ids),
            messages=tuple(messages),
            trimmed_turns=dropped,
            templated=templated,
            stops=() if templated else (PLAIN_STOP,),
        )
        return prompt_obj, budget is None or len(ids) <= budget

    full, fits = attempt(0)
    if fits:
        return full
    bare, fits = attempt(len(turns))
    if not fits:
        what = "the prompt (with the system prompt)" if system else "the prompt"
        if max_new_tokens is None:
            raise ContextOverflowError(
                f"{what} is {len(bare.input_ids)} tokens after formatting; the context of {model_name} is "
                f"{context_length} tokens, which leaves no room for an answer: shorten the prompt"
            )
        raise ContextOverflowError(
            f"{what} is {len(bare.input_ids)} tokens after formatting; the context of {model_name} is "
            f"{context_length} tokens and max_new_tokens={max_new_tokens} leaves room for {budget}: "
            "shorten the prompt or lower max_new_tokens"
        )
    # Fewest oldest turns to drop: more dropped turns never make the prompt longer, so bisect.
    lo, hi, best = 1, len(turns), bare
    while lo < hi:
        mid = (lo + hi) // 2
        candidate, fits = attempt(mid)
        if fits:
            hi, best = mid, candidate
        else:
            lo = mid + 1
    if best.trimmed_turns != lo:
        best, _ = attempt(lo)
    return best


class ConversationStore:
    """Several named conversations at once."""
    def __init__(self):
        self._conversations: dict[str, Conversation] = {}

    def get(self, name: str | None = None) -> Conversation:
        name = name or DEFAULT_CONVERSATION
        if name not in self._conversations:
            self._conversations[name] = Conversation(name=name)
        return self._conversations[name]

    def for_request(self, req: GenerationRequest, use_context_by_default: bool = False) -> Conversation | None:
        """The conversation ``req`` continues and is remembered in: none for a raw prompt; a throw-away one,
        stored nowhere, for a request's own ``history``; a named one; the default one when the request (or,
        when it does not say, ``use_context_by_default``) asks to use the context."""
        if req.raw:
            return None
        if req.history:
            return Conversation(name="request", messages=[dict(m) for m in req.history])
        if req.conversation is not None:
            return self.get(req.conversation)
        use = use_context_by_default if req.use_context is None else req.use_context
        return self.get() if use else None

    def reset(self, name: str | None = None) -> None:
        """Forget one conversation, or all of them when ``name`` is None."""
        if name is None:
            self._conversations.clear()
        else:
            self._conversations.pop(name, None)

    def names(self) -> list[str]:
        return sorted(n for n, c in self._conversations.items() if c.messages)

    def __contains__(self, name: str) -> bool:
        return name in self._conversations
