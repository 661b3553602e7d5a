"""Ask a model's family how it chats (the ``chat_behaviour`` hook), the same way on every backend.

A backend calls :func:`ask` once per load with the chat template it will
render, and puts the answer on its :class:`~adaptrix.types.LoadedModel`
(``chat``): thinking, hidden spans, template variables and end-of-turn tokens
then come from the family, never from the backend. Imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

import attrs

from adaptrix.errors import ChatTemplateError, PluginError
from adaptrix.generation.conversation import template_source
from adaptrix.types import ChatBehaviour


def ask(host, family: str, config: dict[str, Any] | None, tokenizer, family_options: dict[str, Any] | None = None,
        ) -> ChatBehaviour:
    """The family's :class:`ChatBehaviour` for a model with this ``tokenizer`` (its ``chat_template``).

    ``host`` is the plugin host (the owner answers, else
    :func:`adaptrix.plugins.fallbacks.chat_behaviour`); ``family_options`` are the
    user's (``Engine(enable_thinking=True)``). End-of-turn tokens the
    tokenizer's vocabulary lacks are dropped.
    """
    try:
        template = template_source(tokenizer)
    except ChatTemplateError:  # several named templates and no default: formatting says so when it runs
        template = None
    answer, plugin = host.call_family(
        "chat_behaviour", family, config=config, template=template, family_options=dict(family_options or {})
    )
    if not isinstance(answer, ChatBehaviour):
        raise PluginError(
            f"plugin {plugin!r}: hook chat_behaviour({family!r}) must return an adaptrix.ChatBehaviour or None, "
            f"got {answer!r}"
        )
    known = tuple(t for t in answer.end_of_turn_tokens if in_vocabulary(tokenizer, t))
    return attrs.evolve(answer, end_of_turn_tokens=known)


def in_vocabulary(tokenizer, token: str) -> bool:
    """Whether ``token`` is one token of ``tokenizer``'s vocabulary (not mapped to the unknown token)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    return tid is not None and tid != tokenizer.unk_token_id
