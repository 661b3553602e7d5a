"""Which prompt's keys and values sequence 0 of a llama.cpp context holds, so the next prompt decodes only what differs.

A chat turn or a repeated system prompt then decodes only what is new, as
llama.cpp's server does, and a reply never depends on what ran before it:
llama.cpp computes a batch of one token differently from a batch of several
(measured: logits apart by 0.34 on the embedded model; from two tokens on,
bit-identical), so only prompt tokens are reused, never generated ones (each
was decoded alone), and at least the last :data:`MIN_REDECODE` prompt tokens
are decoded again, as one batch. Reuse needs the same adapters with the same
scales. :meth:`~.runtime.LlamaRuntime._prefill` does the decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Prompt tokens decoded again even when cached: a batch of one rounds differently (see the module docstring).
MIN_REDECODE = 2


class PromptCache:
    """The prompt tokens sequence 0 holds and the adapters (``LoraAdapters.key()``) they were computed with."""

    def __init__(self):
        self.tokens: list[int] = []
        self.adapters: tuple = ()

    def reusable(self, ids: Sequence[int], adapters: tuple) -> int:
        """How many leading tokens of the prompt ``ids`` need no decoding with ``adapters`` active."""
        if self.adapters != adapters:
            return 0
        keep = 0
        for a, b in zip(self.tokens, ids[:-MIN_REDECODE]):
            if a != b:
                break
            keep += 1
        return keep

    def start(self, keep: int, adapters: tuple) -> None:
        """The context now holds the first ``keep`` cached tokens, for a prompt decoded with ``adapters``."""
        del self.tokens[keep:]
        self.adapters = adapters

    def extend(self, ids: Sequence[int]) -> None:
        """These prompt tokens were decoded after the kept ones."""
        self.tokens.extend(ids)

    def clear(self) -> None:
        """The context holds nothing of sequence 0 any more."""
        self.tokens = []

    def forget_adapter(self, adapter_id: int) -> None:
        """An adapter is freed: what it computed must not be reused (its id may name another adapter later)."""
        if any(key == adapter_id for key, _ in self.adapters):
            self.tokens, self.adapters = [], ()
