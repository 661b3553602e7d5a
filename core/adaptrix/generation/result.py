"""What a request becomes: the prepared request (formatted, not yet generated) and its result."""

from __future__ import annotations

from typing import Any

import attrs

from adaptrix.generation.grammar import Grammar
from adaptrix.generation.scoring import TokenLogprob
from adaptrix.generation.text import TextPipeline
from adaptrix.generation.tools.calls import ToolCall
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.types import GenerationConfig


@attrs.frozen
class GenerationResult:
    """What one generation produced (``Engine.generate_detailed``)."""

    text: str
    #: Generated token ids as the model produced them (EOS included when it ended the turn).
    token_ids: tuple[int, ...]
    prompt_tokens: int
    #: ``"eos"``, ``"stop"`` (a stop string), ``"length"`` (max_new_tokens) or ``"cancelled"``.
    finish_reason: str
    settings: GenerationConfig
    #: History turns dropped to fit the context window.
    trimmed_turns: int = 0
    raw_text: str = ""
    #: With ``logprobs=K``: a :class:`~adaptrix.generation.scoring.TokenLogprob` per generated token (raw
    #: model logits, K alternatives each); ``None`` when not asked for.
    logprobs: tuple[TokenLogprob, ...] | None = None
    #: With ``tools=``: the calls parsed out of the output by the family's tool format (``text`` is then what
    #: is not a call); ``()`` when the model called nothing.
    tool_calls: tuple[ToolCall, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            **({"tool_calls": [c.as_openai() for c in self.tool_calls]} if self.tool_calls else {}),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": len(self.token_ids),
            "trimmed_turns": self.trimmed_turns,
            "settings": self.settings.as_dict(),
        }


#: Prompt tokens decoded before a raw output's first token (one is enough for SentencePiece's leading space;
#: a few cover a special token or a character split across tokens at the prompt's end).
DECODE_CONTEXT = 4


@attrs.frozen
class PreparedRequest:
    """A request formatted as ``generate`` would run it, not yet generated (``Engine.prepare_request``).

    For step-level decoders (:mod:`adaptrix.backends.transformers.batching`): the prompt ids, the
    resolved settings, the stop strings and hidden spans of the text pipeline,
    and the model's end-of-turn and padding ids.
    """

    #: The formatted prompt (:class:`adaptrix.generation.conversation.Prompt`).
    prompt: Any
    settings: GenerationConfig
    stops: tuple[str, ...]
    spans: tuple[tuple[str, str], ...]
    #: Closing tag when the prompt ends inside a hidden span (see :func:`open_span`).
    inside: str | None
    eos_ids: tuple[int, ...]
    pad_id: int | None
    #: Strip the output's leading and trailing whitespace (``False``: raw completions, text as generated).
    trim: bool = True
    #: The output's constraint (:class:`~adaptrix.generation.grammar.Grammar`); ``None``: free text.
    grammar: Grammar | None = None
    #: With tools offered: the family's format, which parses the calls out of the output; ``None``: no tools.
    tool_format: ToolFormat | None = None
    #: Report each generated token's logprob with this many alternatives (a step decoder records them from
    #: each step's raw logits); ``None``: no logprobs.
    logprobs: int | None = None

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt.input_ids

    @property
    def decode_context(self) -> tuple[int, ...]:
        """The prompt ids the output is decoded after (:func:`~adaptrix.generation.text.decode_after`): the last
        few when the text is returned as generated (``trim=False``), so a first token's leading space stays;
        none otherwise (trimmed text never starts with a space)."""
        return () if self.trim else tuple(self.input_ids[-DECODE_CONTEXT:])

    def pipeline(self) -> "TextPipeline":
        """A fresh text pipeline (spans, stops, trimming) for this request's output."""
        return TextPipeline(self.spans, self.stops, self.inside, trim=self.trim)


def finished_result(prepared: PreparedRequest, new: list[int], text: str, raw_text: str,
                    pipeline: TextPipeline) -> GenerationResult:
    """The result of a generation whose ids ``new`` gave ``text`` through ``pipeline`` (already run)."""
    if pipeline.stopped:
        reason = "stop"
    elif new and new[-1] in prepared.eos_ids:
        reason = "eos"
    else:
        reason = "length"
    calls: tuple[ToolCall, ...] = ()
    if prepared.tool_format is not None:
        parsed = prepared.tool_format.parse(text)
        text, calls = parsed.content, parsed.calls
    return GenerationResult(
        text=text,
        tool_calls=calls,
        token_ids=tuple(new),
        prompt_tokens=len(prepared.input_ids),
        finish_reason=reason,
        settings=prepared.settings,
        trimmed_turns=prepared.prompt.trimmed_turns,
        raw_text=raw_text,
    )
