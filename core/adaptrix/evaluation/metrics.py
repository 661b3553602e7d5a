"""How an answer is scored: one :class:`Metric` per ``--metric`` name.

- ``exact``: the answer equals the gold answer, ignoring case, surrounding
  spaces, runs of spaces and a final period;
- ``number``: the number after the last "answer is" in the output, else its
  last number, equals the gold number (the gold answer's text is read the
  same way, so ``"... The answer is 192."`` works as a reference);
- ``contains``: the gold answer appears in the output (case and spaces ignored);
- ``choice``: the choice with the highest log-likelihood given the prompt is
  the right one (``acc``); ``acc_norm`` divides each choice's log-likelihood
  by its length in characters first (lm-eval's ``acc`` and ``acc_norm``);
- ``code``: the answer's code (:func:`extract_code`) followed by the item's
  ``tests`` runs without error in the sandbox (:mod:`adaptrix.evaluation.sandbox`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import attrs

from adaptrix.errors import EvaluationError

_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@attrs.frozen
class Metric:
    name: str
    #: ``generate`` (the output text is scored), ``choice`` (log-likelihoods) or ``code`` (run in the sandbox).
    kind: str
    #: New tokens at most when the task sets none.
    max_new_tokens: int
    #: ``extract(output, item) -> answer`` read from the output; ``None`` when it has none.
    extract: Callable[[str, Any], Any]
    #: ``gold(item) -> answer`` the extracted answer is compared with.
    gold: Callable[[Any], Any]
    describe: str


def normalize(text: Any) -> str:
    """Case-folded, spaces collapsed, surrounding spaces and a final period removed."""
    out = " ".join(str(text).casefold().split())
    return out[:-1].rstrip() if out.endswith(".") else out


def final_number(text: str) -> float | None:
    """The number after the last "answer is", else the last number in ``text`` (thousands commas ignored)."""
    text = str(text).replace(",", "")
    stated = _ANSWER_IS.findall(text)
    found = stated or _NUMBER.findall(text)
    return float(found[-1]) if found else None


def extract_code(output: str, item: Any) -> str:
    """The program an answer gives.

    A raw completion (``item.raw``) continues the prompt's code: prompt + output up to its first code fence
    (a model that writes markdown closes the block with one), unless the output opens a fenced block itself.
    A chat answer: its first fenced code block, else the whole answer.
    """
    if item.raw and not re.match(r"\s*```[ \t]*(?:python|py|Python)?[ \t]*\n", output):
        return item.prompt + output.split("```", 1)[0]
    fenced = _FENCE.search(output)
    if fenced:
        return fenced.group(1)
    return output


def is_correct(metric: Metric, extracted: Any, item: Any) -> bool:
    """Whether ``extracted`` (from ``metric.extract``) is right for ``item`` (generation metrics)."""
    gold = metric.gold(item)
    if extracted is None or gold is None:
        return False
    if metric.name == "number":
        return math.isclose(extracted, gold, rel_tol=0, abs_tol=1e-9)
    if metric.name == "contains":
        return bool(gold) and gold in extracted
    return extracted == gold


def choose(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(acc pick, acc_norm pick)``: the index with the highest log-likelihood, raw and per character."""
    if not logprobs or len(logprobs) != len(choices):
        raise EvaluationError(f"{len(logprobs)} scores for {len(choices)} choices")
    raw = max(range(len(logprobs)), key=lambda i: logprobs[i])
    norm = max(range(len(logprobs)), key=lambda i: logprobs[i] / max(1, len(choices[i])))
    return raw, norm


def _gold_number(item) -> float | None:
    if isinstance(item.answer, (int, float)) and not isinstance(item.answer, bool):
        return float(item.answer)
    return final_number(item.answer if isinstance(item.answer, str) else item.reference)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("exact", "generate", 64, lambda out, item: normalize(out), lambda item: normalize(item.answer),
               "the answer equals the gold answer (case, spaces and a final period ignored)"),
        Metric("number", "generate", 256, lambda out, item: final_number(out), _gold_number,
               "the final number of the answer equals the gold number"),
        Metric("contains", "generate", 128, lambda out, item: normalize(out), lambda item: normalize(item.answer),
               "the gold answer appears in the answer"),
        Metric("choice", "choice", 0, lambda out, item: None, lambda item: item.answer,
               "the most likely choice is the right one (acc; acc_norm per character)"),
        Metric("code", "code", 384, extract_code, lambda item: True,
               "the answer's code passes the item's tests in the sandbox"),
    )
}


def check_items(metric: str, items: Sequence[Any], where: str) -> None:
    """Refuse items the metric cannot score (naming the first one at fault)."""
    for item in items:
        if metric == "choice" and not item.choices:
            raise EvaluationError(f"{where}, item {item.index + 1}: metric 'choice' needs 'choices' and 'answer' (an index)")
        if metric == "code" and not item.tests:
            raise EvaluationError(f"{where}, item {item.index + 1}: metric 'code' needs 'tests' and 'entry_point'")
        if metric == "number" and _gold_number(item) is None:
            raise EvaluationError(f"{where}, item {item.index + 1}: metric 'number' needs a number in 'answer', "
                                  f"got {item.answer!r:.80}")
