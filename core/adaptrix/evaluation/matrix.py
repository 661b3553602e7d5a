"""The cells of a comparison and what each produced: value objects, and the ``--adapters`` syntax.

``--adapters`` lists what runs on each model, comma-separated: ``base`` (no
adapter), an adapter (a name in ``--adapters-dir``, a folder or a Hub id), or a
weighted composition ``a=0.5+b=0.5``: built once per model with
:meth:`Engine.compose_adapters`, method ``cat`` where the backend has it (the
weighted sum of the adapters' updates, whatever their ranks), else ``linear``;
a single ``a=0.7`` scales one adapter.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from adaptrix.errors import EvaluationError
from adaptrix.evaluation.stats import wilson

BASE = "base"


@attrs.frozen
class AdapterSpec:
    """What runs on top of a model: the base (``parts == ()``), one adapter, or a weighted composition."""

    label: str
    #: ``((name_or_path, weight), ...)``; a plain adapter has one part and ``weight is None``.
    parts: tuple[tuple[str, float | None], ...] = ()

    @property
    def is_base(self) -> bool:
        return not self.parts

    @property
    def is_composition(self) -> bool:
        return any(w is not None for _, w in self.parts)


def parse_adapter(text: str) -> AdapterSpec:
    """One ``--adapters`` entry (see the module docstring)."""
    text = text.strip()
    if not text:
        raise EvaluationError("--adapters has an empty entry; list e.g. base,math_specialist,a=0.5+b=0.5")
    if text.lower() == BASE:
        return AdapterSpec(BASE)
    if "=" not in text:
        return AdapterSpec(text, ((text, None),))
    parts = []
    for piece in text.split("+"):
        name, eq, weight = piece.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not eq or not name.strip() or not math.isfinite(value):
            raise EvaluationError(f"--adapters entry {text!r}: {piece!r} is not NAME=WEIGHT (e.g. a=0.5+b=0.5)")
        parts.append((name.strip(), value))
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise EvaluationError(f"--adapters entry {text!r} names an adapter twice")
    return AdapterSpec(text, tuple(parts))


def parse_adapters(text: str | list[str]) -> list[AdapterSpec]:
    """``base,a,a=0.5+b=0.5`` (or several such arguments) as specs, in order, each once."""
    entries = [e for t in ([text] if isinstance(text, str) else text) for e in t.split(",")]
    specs = [parse_adapter(e) for e in entries]
    labels = [s.label for s in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise EvaluationError(f"--adapters lists {label!r} twice")
    return specs


@attrs.frozen
class ItemResult:
    """One item of one cell: what was asked, what came out, how it scored."""

    index: int
    prompt: str
    output: str
    extracted: Any
    correct: bool
    #: New tokens generated (0 for log-likelihood metrics).
    tokens: int = 0
    #: This item's share of the wall time of the batch it ran in.
    seconds: float = 0.0
    #: Metric-specific details (choice: ``logprobs``, ``acc_norm``; code: the sandbox's ``reason``).
    extra: dict = attrs.field(factory=dict)
    cached: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "prompt": self.prompt, "output": self.output, "extracted": self.extracted,
                "correct": self.correct, "tokens": self.tokens, "seconds": round(self.seconds, 4), **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, cached: bool = False) -> "ItemResult":
        known = {"index", "prompt", "output", "extracted", "correct", "tokens", "seconds"}
        return cls(index=d["index"], prompt=d["prompt"], output=d["output"], extracted=d.get("extracted"),
                   correct=bool(d["correct"]), tokens=int(d.get("tokens", 0)), seconds=float(d.get("seconds", 0.0)),
                   extra={k: v for k, v in d.items() if k not in known}, cached=cached)


@attrs.frozen
class Cell:
    """One (model, adapter, backend, task) of a comparison and its item results, in item order."""

    model: str
    adapter: str
    backend: str
    task: str
    metric: str
    items: tuple[ItemResult, ...]

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.items)

    @property
    def score(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.correct, self.n)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.items)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.items)

    @property
    def tokens_per_second(self) -> float | None:
        """New tokens per second of the items computed in this run (cached ones took no time now)."""
        fresh = [r for r in self.items if not r.cached]
        secs = sum(r.seconds for r in fresh)
        toks = sum(r.tokens for r in fresh)
        return toks / secs if secs > 0 and toks else None

    @property
    def cached(self) -> int:
        return sum(r.cached for r in self.items)

    def extra_scores(self) -> dict[str, float]:
        """Further scores of the metric (choice: ``acc_norm``)."""
        if self.metric == "choice" and self.n:
            return {"acc_norm": sum(bool(r.extra.get("acc_norm")) for r in self.items) / self.n}
        return {}

    def as_dict(self, items: bool = True) -> dict[str, Any]:
        lo, hi = self.ci
        tps = self.tokens_per_second
        out = {"model": self.model, "adapter": self.adapter, "backend": self.backend, "task": self.task,
               "metric": self.metric, "n": self.n, "correct": self.correct, "score": self.score,
               "ci": [lo, hi], **self.extra_scores(), "tokens": self.tokens,
               "tokens_per_second": None if tps is None else round(tps, 2), "seconds": round(self.seconds, 3),
               "cached": self.cached}
        if items:
            out["items"] = [r.as_dict() for r in self.items]
        return out
