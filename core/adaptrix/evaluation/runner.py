"""Running the cells of a comparison through the engine.

For each (model, backend) the engine is loaded once (and not at all when the
cache already holds every result), each adapter and composition once, and
every task's items are asked of all the adapters together: one batch holds
``batch_size`` items for each adapter (``generate_batch(prompts,
adapters=[...])``, ``score_batch(..., adapters=[...])``), so a model's
adapters cost one pass over the items (``together=False`` runs the cells one
after another instead, for comparison). Items with earlier turns (``history``)
are asked one at a time. Each result is cached as soon as its batch finishes.

Generation is greedy (``temperature=0``, ``repetition_penalty=1``) unless
``EvalOptions`` says otherwise.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import attrs

from adaptrix.adapters.sources import resolve_adapter
from adaptrix.backends.choice import choose_backend
from adaptrix.engine import Engine
from adaptrix.errors import EvaluationError
from adaptrix.evaluation.cache import ResultCache, path_digest, text_digest
from adaptrix.evaluation.matrix import AdapterSpec, Cell, ItemResult
from adaptrix.evaluation.metrics import METRICS, choose, is_correct
from adaptrix.evaluation.sandbox import run_program
from adaptrix.evaluation.tasks import Item, Task
from adaptrix.models.source import resolve_source
from adaptrix.plugins.host import get_host


@attrs.frozen
class EvalOptions:
    """How cells run (what changes a result is part of each item's cache key, see :meth:`settings`)."""

    #: Items per batch; a batch holds this many items for each adapter of the model.
    batch_size: int = 16
    #: The adapters of a model in the same batches (``False``: each cell on its own, one after another).
    together: bool = True
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    sandbox_timeout: float = 10.0
    sandbox_memory_mb: int = 1024
    progress: bool = False
    #: ``Engine(...)`` keyword arguments besides the model and backend (device, dtype, adapters_dir, threads...).
    engine_options: dict = attrs.field(factory=dict)

    def settings(self, task: Task) -> dict[str, Any]:
        """What decides a result besides model, adapter, backend and item."""
        out = {"metric": task.metric, "max_new_tokens": task.max_new_tokens, "temperature": self.temperature,
               "repetition_penalty": self.repetition_penalty, "device": self.engine_options.get("device", "cpu"),
               "dtype": self.engine_options.get("dtype", "auto")}
        if task.metric == "code":
            out["sandbox"] = [self.sandbox_timeout, self.sandbox_memory_mb]
        if METRICS[task.metric].kind == "choice":
            for key in ("max_new_tokens", "temperature", "repetition_penalty"):
                out.pop(key)
        return out


@contextlib.contextmanager
def open_engine(model: str | None, backend: str, options: EvalOptions) -> Iterator[Any]:
    """An initialized :class:`~adaptrix.Engine` for ``model`` on ``backend``, cleaned up afterwards."""
    engine = Engine(model, backend=backend, progress=options.progress, **options.engine_options)
    engine.initialize()
    try:
        yield engine
    finally:
        engine.cleanup()


def model_identity(model: str | None, backend: str, options: EvalOptions) -> tuple[str, str]:
    """``(digest, backend name)`` of a model source, without loading it (``auto`` resolved as the engine would)."""
    host = get_host()
    revision = options.engine_options.get("revision")
    src = resolve_source(model, revision=revision, progress=options.progress, host=host)
    name = choose_backend(src, backend, host).name
    local = src.gguf_file or (src.path and Path(src.path))
    if local and Path(local).exists():
        return path_digest(local), name
    return text_digest(src.model_id, revision), name


def adapter_digest(spec: AdapterSpec, adapters_dir) -> str:
    """A digest of what an adapter spec loads (its folders' files; a Hub id by name)."""
    if spec.is_base:
        return "base"
    parts = []
    for name, weight in spec.parts:
        try:
            _, path = resolve_adapter(name, adapters_dir)
            digest = path_digest(path)
        except Exception:  # a Hub id not downloaded yet: its name (loading it will say what is wrong)
            digest = text_digest(name)
        parts.append((digest, weight))
    return text_digest(parts)


def load_specs(engine, specs: Sequence[AdapterSpec], adapters_dir=None) -> dict[str, str | None]:
    """``{label: adapter name for generate_batch}``: loads each adapter, composes each composition (once).

    Names are found in ``adapters_dir`` (the run's, whatever the engine's own is), as :func:`adapter_digest` does.
    """
    def where(name: str) -> str:
        if adapters_dir is None:
            return name
        try:
            return str(resolve_adapter(name, adapters_dir)[1])
        except Exception:  # the engine's own lookup says what is wrong
            return name

    names: dict[str, str | None] = {}
    known = {a["name"] for a in engine.list_adapters()}
    for spec in specs:
        if spec.is_base:
            names[spec.label] = None
            continue
        resolved = list(engine.adapters.ensure_loaded([where(n) for n, _ in spec.parts]))
        if not spec.is_composition:
            names[spec.label] = resolved[0]
            continue
        name = "mix-" + text_digest([(r, w) for r, (_, w) in zip(resolved, spec.parts)])[:12]
        if name not in known:
            methods = getattr(engine.adapters, "COMPOSE_METHODS", ())
            method = "cat" if "cat" in methods else "linear"  # cat: the weighted sum of the updates, any ranks
            engine.compose_adapters({r: w for r, (_, w) in zip(resolved, spec.parts)}, name, method)
        names[spec.label] = name
    return names


@attrs.frozen
class _Row:
    item: Item
    spec: AdapterSpec
    key: str


def _continuation(prompt: str, choice: str) -> str:
    """A choice as lm-eval appends it to the question: after one space unless either side has one."""
    return choice if (not prompt or prompt[-1].isspace() or choice[:1].isspace()) else " " + choice


class CellRunner:
    """Runs tasks for one loaded (model, backend): the adapters of ``specs`` together (see the module docstring)."""

    def __init__(self, engine_for: Callable[[], Any], names: Callable[[], dict[str, str | None]],
                 options: EvalOptions, bars: dict[str, Any]):
        self._engine_for = engine_for
        self._names = names
        self.options = options
        self.bars = bars

    def run(self, task: Task, rows: list[_Row], done: Callable[[_Row, ItemResult], None]) -> None:
        """Compute ``rows`` (uncached (item, adapter) pairs) and hand each result to ``done``."""
        if not rows:
            return
        specs = list(dict.fromkeys(r.spec for r in rows))
        passes = [specs] if self.options.together else [[s] for s in specs]
        size = self.options.batch_size
        for group in passes:
            mine = [r for r in rows if r.spec in group]
            items = list(dict.fromkeys(r.item.index for r in mine if not r.item.history))
            lone = [r for r in mine if r.item.history]
            for start in range(0, len(items), size):
                chunk = set(items[start:start + size])
                batch = [r for r in mine if r.item.index in chunk and not r.item.history]
                for sub in _by_options(batch):
                    self._batch(task, sub, done)
            for r in lone:
                self._batch(task, [r], done)

    def _batch(self, task: Task, rows: list[_Row], done) -> None:
        engine = self._engine_for()
        names = self._names()
        metric = METRICS[task.metric]
        start = time.perf_counter()
        if metric.kind == "choice":
            outcomes = self._choices(engine, names, rows)
        else:
            outcomes = self._generate(engine, names, task, rows)
        share = (time.perf_counter() - start) / len(rows)
        for row, (output, tokens) in zip(rows, outcomes):
            item = row.item
            extra: dict[str, Any] = {}
            if metric.kind == "choice":
                logprobs = output
                pick, pick_norm = choose(logprobs, item.choices)
                extracted, correct, output = pick, pick == item.answer, item.choices[pick]
                extra = {"logprobs": logprobs, "acc_norm": pick_norm == item.answer, "pick_norm": pick_norm}
            elif metric.kind == "code":
                extracted = metric.extract(output, item)
                ran = run_program(f"{extracted}\n\n{item.tests}", timeout=self.options.sandbox_timeout,
                                  memory_mb=self.options.sandbox_memory_mb)
                correct = ran.passed
                extra = {"sandbox": ran.reason, "sandbox_output": ran.output[-500:]}
            else:
                extracted = metric.extract(output, item)
                correct = is_correct(metric, extracted, item)
            result = ItemResult(index=item.index, prompt=item.prompt, output=output, extracted=extracted,
                                correct=bool(correct), tokens=tokens, seconds=share, extra=extra)
            done(row, result)

    def _generate(self, engine, names, task: Task, rows: list[_Row]) -> list[tuple[str, int]]:
        first = rows[0].item
        settings = dict(max_new_tokens=task.max_new_tokens, temperature=self.options.temperature,
                        repetition_penalty=self.options.repetition_penalty)
        if first.stop:
            settings["stop"] = list(first.stop)
        if first.system is not None:
            settings["system"] = first.system
        if first.raw:
            settings["raw"] = True
        if first.history:
            (row,) = rows
            res = engine.generate_detailed(first.prompt, history=[dict(m) for m in first.history],
                                           adapter=names[row.spec.label], use_context=False, **settings)
            return [(res.text, len(res.token_ids))]
        results = engine.generate_batch_detailed([r.item.prompt for r in rows],
                                                 adapters=[names[r.spec.label] for r in rows], **settings)
        return [(res.text, len(res.token_ids)) for res in results]

    def _choices(self, engine, names, rows: list[_Row]) -> list[tuple[list[float], int]]:
        if not hasattr(engine, "score_batch"):
            raise EvaluationError(
                "metric 'choice' needs Engine.score_batch (log-likelihoods), which this adaptrix does not have; "
                "use a generation metric (exact, number, contains) or update adaptrix"
            )
        pairs, adapters, owners = [], [], []
        for i, r in enumerate(rows):
            for choice in r.item.choices:
                pairs.append((r.item.prompt, _continuation(r.item.prompt, choice)))
                adapters.append(names[r.spec.label])
                owners.append(i)
        scores = engine.score_batch(pairs, adapters=adapters)
        out: list[list[float]] = [[] for _ in rows]
        for owner, score in zip(owners, scores):
            out[owner].append(float(score.logprob))
        return [(lp, 0) for lp in out]


def _by_options(rows: list[_Row]) -> list[list[_Row]]:
    """Rows grouped by what ``generate_batch`` applies to a whole batch (raw, stop strings, system prompt)."""
    groups: dict[tuple, list[_Row]] = {}
    for r in rows:
        groups.setdefault((r.item.raw, r.item.stop, r.item.system), []).append(r)
    return list(groups.values())


def _label(model: str | None) -> str:
    return "default" if model is None else str(model)


def run_matrix(models: Sequence[str | None], specs: Sequence[AdapterSpec], backends: Sequence[str],
               tasks: Sequence[Task], options: EvalOptions = EvalOptions(),
               cache: ResultCache | None = None) -> list[Cell]:
    """Every cell (model, adapter, backend, task), in that nesting order, computing only what the cache lacks."""
    cache = cache if cache is not None else ResultCache(enabled=False)
    adapters_dir = options.engine_options.get("adapters_dir", "adapters")
    adapter_digests = {s.label: adapter_digest(s, adapters_dir) for s in specs}
    cells: list[Cell] = []
    for model in models:
        for backend in backends:
            digest, backend_name = model_identity(model, backend, options)
            with contextlib.ExitStack() as stack:
                state: dict[str, Any] = {}

                def engine_for() -> Any:
                    if "engine" not in state:
                        state["engine"] = stack.enter_context(open_engine(model, backend_name, options))
                    return state["engine"]

                def names() -> dict[str, str | None]:
                    if "names" not in state:
                        state["names"] = load_specs(engine_for(), specs, adapters_dir)
                    return state["names"]

                for task in tasks:
                    cells += _run_task(model, backend_name, digest, specs, adapter_digests, task, options, cache,
                                       engine_for, names)
    return cells


def _run_task(model, backend, digest, specs, adapter_digests, task, options, cache, engine_for, names) -> list[Cell]:
    settings = options.settings(task)
    results: dict[tuple[str, int], ItemResult] = {}
    rows: list[_Row] = []
    for spec in specs:
        for item in task.items:
            key = cache.key(digest, adapter_digests[spec.label], backend, settings, item.fingerprint(),
                            label=f"{Path(_label(model)).name}-{spec.label}-{backend}-{task.name}")
            hit = cache.get(key)
            if hit is not None:
                try:
                    results[(spec.label, item.index)] = ItemResult.from_dict(hit, cached=True)
                    continue
                except (KeyError, TypeError, ValueError):
                    pass  # an unreadable entry: computed again
            rows.append(_Row(item, spec, key))
    bars = _bars(model, backend, specs, task, results, options.progress)
    try:
        def done(row: _Row, result: ItemResult) -> None:
            cache.put(row.key, result.as_dict())
            results[(row.spec.label, row.item.index)] = result
            bars[row.spec.label].update(1)

        CellRunner(engine_for, names, options, bars).run(task, rows, done)
    finally:
        for bar in bars.values():
            bar.close()
    return [Cell(model=_label(model), adapter=spec.label, backend=backend, task=task.name, metric=task.metric,
                 items=tuple(results[(spec.label, item.index)] for item in task.items)) for spec in specs]


def _bars(model, backend, specs, task, results, progress: bool) -> dict[str, Any]:
    """A progress bar per cell (stderr, only when ``progress``), starting at its cached items."""
    from tqdm.auto import tqdm

    bars = {}
    for position, spec in enumerate(specs):
        have = sum(1 for (label, _) in results if label == spec.label)
        bars[spec.label] = tqdm(total=len(task.items), initial=have, position=position, leave=False,
                                desc=f"{_label(model)} | {spec.label} | {backend} | {task.name}", unit="item",
                                disable=not progress)
    return bars
