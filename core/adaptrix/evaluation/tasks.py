"""A task: items read from a JSONL file (one JSON object a line), with few-shot prompts built from the same file.

A line holds, besides optional ``id``:

- generation: ``prompt`` (a string) or ``messages`` (chat messages; when the
  last one is the assistant's, it is the reference answer and the user
  message before it is the prompt; earlier messages are the history), and
  ``answer`` (the gold answer; with ``messages`` ending on the assistant, that
  message is the answer). Optional ``raw: true`` sends the prompt without the
  chat template (a plain completion) and ``stop`` lists stop strings.
- multiple choice: ``prompt``, ``choices`` (strings) and ``answer`` (the index
  of the right choice).
- code: ``prompt``, ``tests`` (Python that asserts, run after the answer's code)
  and ``entry_point`` (the function the answer must define).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs

from adaptrix.errors import EvaluationError
from adaptrix.evaluation.metrics import METRICS, check_items
from adaptrix.storage.jsonl import jsonl_objects


@attrs.frozen
class Item:
    """One question of a task, as it will be asked (few-shot examples already in ``prompt``)."""

    index: int
    prompt: str
    #: The gold answer: a string, a number, or (multiple choice) the right choice's index.
    answer: Any
    #: The reference answer's full text where there is one (used for few-shot examples).
    reference: str = ""
    #: Earlier turns ``({"role", "content"}, ...)`` asked before ``prompt`` (multi-turn tasks).
    history: tuple[dict, ...] = ()
    system: str | None = None
    choices: tuple[str, ...] = ()
    tests: str | None = None
    entry_point: str | None = None
    raw: bool = False
    stop: tuple[str, ...] = ()
    id: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides this item's result (for the cache key)."""
        return {
            "prompt": self.prompt, "answer": self.answer, "history": [dict(m) for m in self.history],
            "system": self.system, "choices": list(self.choices), "tests": self.tests,
            "entry_point": self.entry_point, "raw": self.raw, "stop": list(self.stop),
        }


@attrs.frozen
class Task:
    """A named list of items and the metric that scores them."""

    name: str
    items: tuple[Item, ...]
    metric: str
    source: str
    #: New tokens at most per answer (generation metrics).
    max_new_tokens: int = 256
    shots: int = 0


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a task file; a bad line raises :class:`EvaluationError` naming the file and line."""
    return [row for _, row in jsonl_objects(path, EvaluationError, "task file", '"prompt" and "answer" per line')]


def parse_item(row: dict[str, Any], index: int, where: str) -> Item:
    """One item from a JSON object; ``where`` (``file, line N``) is named in errors."""

    def text(field: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise EvaluationError(f"{where}: {field} must be a non-empty string, got {value!r:.80}")
        return value

    history: list[dict] = []
    system = row.get("system")
    reference = ""
    answer = row.get("answer")
    if "messages" in row and "prompt" not in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise EvaluationError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise EvaluationError(f"{where}: messages[{i}] must be an object with role system, user or assistant")
            text(f"messages[{i}].content", m.get("content"))
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        if messages and messages[-1]["role"] == "assistant":
            reference = messages[-1]["content"]
            if answer is None:
                answer = reference
            messages = messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            raise EvaluationError(f"{where}: messages must end with the user's question (then, optionally, "
                                  "the assistant's reference answer)")
        prompt = messages[-1]["content"]
        history = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    elif "prompt" in row:
        prompt = text("prompt", row["prompt"])
    else:
        raise EvaluationError(f"{where}: an item needs 'prompt' or 'messages' (got fields {sorted(row)})")
    choices = row.get("choices", ())
    if choices:
        if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
            raise EvaluationError(f"{where}: choices must be a list of non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise EvaluationError(f"{where}: answer must be the index of the right choice (0 to "
                                  f"{len(choices) - 1}), got {answer!r}")
        reference = choices[answer]
    tests = row.get("tests")
    if tests is not None:
        text("tests", tests)
        entry = text("entry_point", row.get("entry_point"))
    else:
        entry = row.get("entry_point")
    if answer is None and tests is None:
        raise EvaluationError(f"{where}: no answer: give 'answer' (or end 'messages' with the assistant's answer)")
    if not reference and isinstance(answer, (str, int, float)) and not isinstance(answer, bool):
        reference = str(answer)
    stop = row.get("stop", ())
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise EvaluationError(f"{where}: stop must be a string or a list of non-empty strings")
    if system is not None and not isinstance(system, str):
        raise EvaluationError(f"{where}: system must be a string")
    return Item(index=index, prompt=prompt, answer=answer, reference=reference, history=tuple(history), system=system,
                choices=tuple(choices), tests=tests, entry_point=entry, raw=bool(row.get("raw", False)),
                stop=tuple(stop), id=None if row.get("id") is None else str(row["id"]))


def infer_metric(items: Sequence[Item]) -> str:
    """The metric a task's items call for when none is given: choice, code, else exact."""
    if all(i.choices for i in items):
        return "choice"
    if all(i.tests for i in items):
        return "code"
    return "exact"


def with_shots(items: Sequence[Item], shots: int) -> tuple[Item, ...]:
    """Each item with ``shots`` solved examples from the same task before its prompt (never itself).

    The examples are the first ``shots`` other items, in file order, as
    ``question\\nanswer`` blocks separated by a blank line (multiple choice:
    ``question answer``, as lm-eval joins them), so every model sees the same
    prompt and items stay independent (they batch).
    """
    if shots < 0:
        raise EvaluationError(f"--shots must be 0 or more, got {shots}")
    if shots == 0:
        return tuple(items)
    if shots >= len(items):
        raise EvaluationError(f"--shots {shots} needs more than {shots} items in the task; it has {len(items)}")
    out = []
    for item in items:
        examples = [o for o in items if o.index != item.index][:shots]
        sep = " " if item.choices else "\n"
        prefix = "".join(f"{e.prompt}{sep}{e.reference}\n\n" for e in examples)
        out.append(attrs.evolve(item, prompt=prefix + item.prompt))
    return tuple(out)


def load_task(path: str | Path, *, metric: str | None = None, shots: int = 0, limit: int | None = None,
              max_new_tokens: int | None = None, name: str | None = None) -> Task:
    """A :class:`Task` from a JSONL file: ``limit`` first items, ``shots`` examples each (from the whole file)."""
    path = Path(path)
    rows = read_jsonl(path)
    items = [parse_item(row, i, f"{path}, item {i + 1}") for i, row in enumerate(rows)]
    metric = metric or infer_metric(items)
    if metric not in METRICS:
        raise EvaluationError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    check_items(metric, items, str(path))
    shot_items = with_shots(items, shots)
    if limit is not None:
        if limit < 1:
            raise EvaluationError(f"--limit must be at least 1, got {limit}")
        shot_items = shot_items[:limit]
    return Task(name=name or path.stem, items=shot_items, metric=metric, source=str(path),
                max_new_tokens=max_new_tokens or METRICS[metric].max_new_tokens, shots=shots)
