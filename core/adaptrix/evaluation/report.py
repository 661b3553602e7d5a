"""What a comparison shows: the terminal table, JSON, CSV, a plot and a self-contained ``report.html``.

The HTML report holds the table, the plot (inlined), each adapter's
difference from the base model and each model's difference from the first
(same adapter, backend and task) with the exact McNemar test on the paired
items, and the items where the two cells disagree, side by side.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from adaptrix.evaluation.matrix import BASE, Cell
from adaptrix.evaluation.stats import mcnemar_exact, paired_counts
from adaptrix.storage.files import atomic_file

#: Disagreeing items shown per comparison in report.html.
MAX_DISAGREEMENTS = 50


def table_rows(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One row per cell for :func:`adaptrix.cli.output.format_table` (and the CSV)."""
    rows = []
    for c in cells:
        lo, hi = c.ci
        tps = c.tokens_per_second
        rows.append({
            "model": c.model, "adapter": c.adapter, "backend": c.backend, "task": c.task, "metric": c.metric,
            "score": f"{100 * c.score:.1f}%", "ci": f"[{100 * lo:.1f}, {100 * hi:.1f}]", "n": c.n,
            "correct": c.correct, "tps": "-" if tps is None else f"{tps:.1f}", "time": f"{c.seconds:.1f}s",
            "cached": c.cached,
            **{k: f"{100 * v:.1f}%" for k, v in c.extra_scores().items()},
        })
    return rows


COLUMNS = (("model", "model"), ("adapter", "adapter"), ("backend", "backend"), ("task", "task"),
           ("score", "score"), ("ci", "95% CI"), ("n", "n"), ("tps", "tokens/s"), ("time", "time"))


def columns(cells: Sequence[Cell]) -> list[tuple[str, str]]:
    """The table's ``(key, header)`` columns (``acc_norm`` when a cell has it)."""
    out = list(COLUMNS)
    if any(c.extra_scores() for c in cells):
        out.insert(6, ("acc_norm", "acc_norm"))
    return out


def as_json(cells: Sequence[Cell], items: bool = True) -> dict[str, Any]:
    return {"cells": [c.as_dict(items=items) for c in cells], "comparisons": comparisons(cells)}


def comparisons(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Each adapter against the base (same model, backend, task), each model against the first (same adapter,
    backend, task) and each backend against the first (same model, adapter, task): score difference,
    discordant counts and the exact McNemar p-value."""
    by_key = {(c.model, c.adapter, c.backend, c.task): c for c in cells}
    models = list(dict.fromkeys(c.model for c in cells))
    backends = list(dict.fromkeys(c.backend for c in cells))
    out = []
    for c in cells:
        refs = []
        if c.adapter != BASE and (c.model, BASE, c.backend, c.task) in by_key:
            refs.append(("adapter vs base", by_key[(c.model, BASE, c.backend, c.task)]))
        if c.model != models[0] and (models[0], c.adapter, c.backend, c.task) in by_key:
            refs.append(("model vs first model", by_key[(models[0], c.adapter, c.backend, c.task)]))
        if c.backend != backends[0] and (c.model, c.adapter, backends[0], c.task) in by_key:
            refs.append(("backend vs first backend", by_key[(c.model, c.adapter, backends[0], c.task)]))
        for kind, ref in refs:
            if [r.index for r in ref.items] != [r.index for r in c.items]:
                continue  # not the same items (different --limit): no paired test
            only_c, only_ref = paired_counts([r.correct for r in c.items], [r.correct for r in ref.items])
            out.append({"kind": kind, "task": c.task, "backend": c.backend,
                        "a": {"model": c.model, "adapter": c.adapter, "backend": c.backend},
                        "b": {"model": ref.model, "adapter": ref.adapter, "backend": ref.backend},
                        "difference": c.score - ref.score, "only_a": only_c, "only_b": only_ref,
                        "p_value": mcnemar_exact(only_c, only_ref), "n": c.n})
    return out


def write_csv(cells: Sequence[Cell], path: Path) -> None:
    fields = ["model", "adapter", "backend", "task", "metric", "n", "correct", "score", "ci_low", "ci_high",
              "acc_norm", "tokens", "tokens_per_second", "seconds", "cached"]
    with atomic_file(path, doing="write the results CSV") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for c in cells:
                d = c.as_dict(items=False)
                d["ci_low"], d["ci_high"] = d.pop("ci")
                w.writerow(d)


def plot_png(cells: Sequence[Cell]) -> bytes | None:
    """Grouped bars (one group per task, one bar per model/adapter/backend) with Wilson 95% whiskers, as PNG
    bytes; ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = list(dict.fromkeys(c.task for c in cells))
    series = list(dict.fromkeys((c.model, c.adapter, c.backend) for c in cells))
    by_key = {(c.model, c.adapter, c.backend, c.task): c for c in cells}
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(series)) ** 0.5 + 3), 4.5), dpi=110)
    for s, key in enumerate(series):
        xs, ys, err = [], [], [[], []]
        for t, task in enumerate(tasks):
            c = by_key.get((*key, task))
            if c is None:
                continue
            lo, hi = c.ci
            xs.append(t - 0.4 + width * (s + 0.5))
            ys.append(100 * c.score)
            err[0].append(100 * (c.score - lo))
            err[1].append(100 * (hi - c.score))
        models = {k[0] for k in series}
        backends = {k[2] for k in series}
        label = " | ".join(p for p, many in ((key[0], len(models) > 1), (key[1], True), (key[2], len(backends) > 1))
                           if many)
        ax.bar(xs, ys, width * 0.95, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("score (%) with Wilson 95% interval")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render_html(cells: Sequence[Cell], png: bytes | None) -> str:
    """The self-contained report (no external file, script or style)."""
    rows = table_rows(cells)
    cols = columns(cells)
    head = "".join(f"<th>{_esc(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{_esc(r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    plot = (f'<img alt="scores per task" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else
            "<p><em>No plot: matplotlib is not installed (pip install matplotlib).</em></p>")
    comps = comparisons(cells)
    crow = "".join(
        f"<tr><td>{_esc(c['kind'])}</td><td>{_esc(c['task'])}</td><td>{_esc(c['backend'])}</td>"
        f"<td>{_esc(c['a']['model'])} | {_esc(c['a']['adapter'])} | {_esc(c['a']['backend'])}</td>"
        f"<td>{_esc(c['b']['model'])} | {_esc(c['b']['adapter'])} | {_esc(c['b']['backend'])}</td><td>{100 * c['difference']:+.1f} pts</td><td>{c['only_a']} / {c['only_b']}</td>"
        f"<td>{c['p_value']:.4g}</td></tr>" for c in comps)
    by_key = {(c.model, c.adapter, c.backend, c.task): c for c in cells}
    sections = []
    for comp in comps:
        a = by_key[(comp["a"]["model"], comp["a"]["adapter"], comp["a"]["backend"], comp["task"])]
        b = by_key[(comp["b"]["model"], comp["b"]["adapter"], comp["b"]["backend"], comp["task"])]
        differ = [(x, y) for x, y in zip(a.items, b.items) if x.correct != y.correct]
        if not differ:
            continue
        name_a, name_b = (f"{x.model} | {x.adapter} | {x.backend}" for x in (a, b))
        trs = "".join(
            f"<tr><td>{x.index}</td><td><pre>{_esc(x.prompt)}</pre></td>"
            f"<td class='{'ok' if x.correct else 'bad'}'><pre>{_esc(x.output)}</pre>extracted: {_esc(x.extracted)}</td>"
            f"<td class='{'ok' if y.correct else 'bad'}'><pre>{_esc(y.output)}</pre>extracted: {_esc(y.extracted)}</td></tr>"
            for x, y in differ[:MAX_DISAGREEMENTS])
        more = f"<p>{len(differ) - MAX_DISAGREEMENTS} more not shown.</p>" if len(differ) > MAX_DISAGREEMENTS else ""
        sections.append(
            f"<h3>{_esc(comp['task'])}: {_esc(name_a)} vs {_esc(name_b)} — {len(differ)} items disagree</h3>"
            f"<table class='items'><tr><th>#</th><th>prompt</th><th>{_esc(name_a)}</th>"
            f"<th>{_esc(name_b)}</th></tr>{trs}</table>{more}")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
             "pre{white-space:pre-wrap;margin:0;max-width:520px;font-size:12px}.ok{background:#e8f6e8}"
             ".bad{background:#fbe9e9}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>adaptrix evaluation</title>"
            f"<style>{style}</style></head><body><h1>adaptrix evaluation</h1>"
            f"<h2>Scores</h2><table><tr>{head}</tr>{body}</table>"
            f"<h2>Plot</h2>{plot}"
            f"<h2>Differences (exact McNemar test on paired items)</h2>"
            + (f"<table><tr><th>comparison</th><th>task</th><th>backend</th><th>A</th><th>B</th><th>A − B</th>"
               f"<th>only A / only B right</th><th>p-value</th></tr>{crow}</table>" if comps else
               "<p>Nothing to compare (one cell per task).</p>")
            + "<h2>Items where the cells disagree</h2>" + ("".join(sections) or "<p>None.</p>")
            + "</body></html>")


def write_out(cells: Sequence[Cell], folder: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.csv``, ``scores.png`` (when matplotlib is installed) and ``report.html``."""
    folder = Path(folder)
    written = {}
    with atomic_file(folder / "results.json", doing="write the results") as tmp:
        tmp.write_text(json.dumps(as_json(cells), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    written["json"] = folder / "results.json"
    write_csv(cells, folder / "results.csv")
    written["csv"] = folder / "results.csv"
    png = plot_png(cells)
    if png is not None:
        with atomic_file(folder / "scores.png", doing="write the plot") as tmp:
            tmp.write_bytes(png)
        written["png"] = folder / "scores.png"
    else:
        print("adaptrix: no plot: matplotlib is not installed (pip install matplotlib); report.html has no plot",
              file=sys.stderr)
    with atomic_file(folder / "report.html", doing="write the report") as tmp:
        tmp.write_text(render_html(cells, png), encoding="utf-8")
    written["html"] = folder / "report.html"
    return written
