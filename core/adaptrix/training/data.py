"""Training data: JSONL loading, validation, chat formatting and answer-only labels.

Each line is one JSON object, either chat turns::

    {"messages": [{"role": "user", "content": "What is 25 times 8?"},
                  {"role": "assistant", "content": "The answer is 200."}]}

or a prompt/completion pair (``{"prompt": "...", "completion": "..."}``, read
as one user turn and one assistant turn). The loss covers only the last
assistant message (and the end-of-turn text the chat template puts after it);
everything before it, system prompt included, is labelled ``-100``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import attrs

from adaptrix.errors import TrainingError
from adaptrix.generation.conversation import has_template, split_answer, tokenize
from adaptrix.storage.jsonl import jsonl_objects

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


@attrs.frozen
class Sample:
    """One validated training example: chat turns ending in the assistant's answer."""

    messages: tuple[tuple[str, str], ...]
    line: int

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@attrs.frozen
class Encoded:
    """Token ids of one sample and its labels (``-100`` outside the answer)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    line: int


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_jsonl(path: str | Path) -> list[Sample]:
    """Read and validate a JSONL file; raise :class:`TrainingError` naming the line at fault."""
    path = Path(path)
    hint = '"messages" or "prompt"/"completion" per line; pass --data FILE.jsonl'
    return [_parse(obj, path, number) for number, obj in jsonl_objects(path, TrainingError, "training data", hint)]


def _parse(obj: Any, path: Path, line: int) -> Sample:
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise TrainingError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise TrainingError(f"{where}: field 'messages' must be a non-empty list of turns, got {msgs!r:.80}")
        turns = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise TrainingError(
                    f"{where}: messages[{i}] must be an object with 'role' and 'content', got {m!r:.80}"
                )
            role, content = m["role"], m["content"]
            if role not in ROLES:
                raise TrainingError(f"{where}: messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise TrainingError(f"{where}: messages[{i}].content must be a string, got {content!r:.80}")
            turns.append((role, content))
        if turns[-1][0] != "assistant" or not turns[-1][1].strip():
            raise TrainingError(
                f"{where}: the last message must be a non-empty 'assistant' turn (the answer the loss is on), "
                f"found role {turns[-1][0]!r}"
            )
        if len(turns) < 2:
            raise TrainingError(f"{where}: 'messages' needs at least one turn before the assistant's answer")
        return Sample(tuple(turns), line)
    missing = [k for k in ("prompt", "completion") if k not in obj]
    if missing:
        raise TrainingError(
            f"{where}: missing field {' and '.join(repr(m) for m in missing)}; each line needs "
            f'"messages" (chat turns) or both "prompt" and "completion" (found keys: {sorted(obj)})'
        )
    for key in ("prompt", "completion"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise TrainingError(f"{where}: field {key!r} must be a non-empty string, got {obj[key]!r:.80}")
    return Sample((("user", obj["prompt"]), ("assistant", obj["completion"])), line)


def render(tokenizer, sample: Sample, chat_template_kwargs: dict | None = None) -> tuple[str, str]:
    """Return ``(prompt text, answer text)``: the prompt exactly as the engine serves it (one formatter,
    :func:`adaptrix.generation.conversation.split_answer`, with or without a chat template)."""
    return split_answer(tokenizer, sample.as_messages(), chat_template_kwargs)


def encode(tokenizer, sample: Sample, max_length: int | None, source: str = "data",
           chat_template_kwargs: dict | None = None) -> Encoded:
    """Tokenize one sample; labels are ``-100`` on every prompt token (tokenized as the engine tokenizes it)."""

    prompt, answer = render(tokenizer, sample, chat_template_kwargs)
    p_ids = tokenize(tokenizer, prompt, has_template(tokenizer))
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not a_ids:
        raise TrainingError(f"{source}:{sample.line}: the answer tokenizes to nothing; give a non-empty answer")
    total = len(p_ids) + len(a_ids)
    if max_length is not None and total > max_length:
        raise TrainingError(
            f"{source}:{sample.line}: sample is {total} tokens, longer than the context of {max_length} "
            "tokens; shorten it or drop the line (or pass a larger --max-length if the model allows it)"
        )
    return Encoded(tuple(p_ids + a_ids), tuple([IGNORE_INDEX] * len(p_ids) + a_ids), sample.line)


def encode_all(tokenizer, samples: list[Sample], max_length: int | None, source: str = "data",
               chat_template_kwargs: dict | None = None) -> list[Encoded]:
    return [encode(tokenizer, s, max_length, source, chat_template_kwargs) for s in samples]


def collate(batch: list[Encoded], pad_id: int):
    """Left-pad a batch into ``input_ids``, ``attention_mask``, ``position_ids`` and ``labels``.

    Left padding puts every answer at the end of its row, so the trainer only
    computes logits for the last ``answer_width`` positions (the LM head over the
    whole vocabulary is a large share of a small model's cost).
    """
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    answer = 0
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, width - n:] = torch.tensor(e.input_ids)
        labels[i, width - n:] = torch.tensor(e.labels)
        mask[i, width - n:] = 1
        first = next(j for j, label in enumerate(e.labels) if label != IGNORE_INDEX)
        answer = max(answer, n - first)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
            "answer_width": min(width, answer + 1)}
