"""The comparison report: paired differences with McNemar, CSV/JSON agreement, a self-contained HTML page."""

from __future__ import annotations

import csv
import json

import pytest

from adaptrix.evaluation import report
from adaptrix.evaluation.matrix import Cell, ItemResult


def cell(model, adapter, outcomes, task="t", backend="transformers"):
    items = tuple(ItemResult(i, f"<q{i}> & more", f"{adapter} says {i}", i, ok) for i, ok in enumerate(outcomes))
    return Cell(model, adapter, backend, task, "exact", items)


@pytest.fixture
def cells():
    base = [True, False, False, True, False, False, False, False, True, False]
    adapter = [True, True, True, True, True, True, False, True, False, True]    # +6 right, -1
    other = [False, False, False, True, False, False, False, False, True, False]  # other model, base: -1
    return [cell("m1", "base", base), cell("m1", "math", adapter), cell("m2", "base", other)]


def test_comparisons_pair_the_same_items(cells):
    comps = {(c["kind"], c["a"]["model"], c["a"]["adapter"]): c for c in report.comparisons(cells)}
    assert set(comps) == {("adapter vs base", "m1", "math"), ("model vs first model", "m2", "base")}
    a = comps[("adapter vs base", "m1", "math")]
    assert (a["only_a"], a["only_b"]) == (6, 1)  # counted by hand from the lists above
    assert a["difference"] == pytest.approx(0.8 - 0.3)
    assert a["p_value"] == pytest.approx(2 * (1 + 7) / 128)  # exact McNemar, n=7 discordant, k=1
    m = comps[("model vs first model", "m2", "base")]
    assert (m["only_a"], m["only_b"], m["p_value"]) == (0, 1, 1.0)


def test_csv_and_json_agree(cells, tmp_path):
    written = report.write_out(cells, tmp_path)
    data = json.loads(written["json"].read_text())
    with open(written["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["adapter"], int(r["correct"]), float(r["ci_low"])) for r in rows] == [
        (c["model"], c["adapter"], c["correct"], c["ci"][0]) for c in data["cells"]]
    assert len(data["cells"][1]["items"]) == 10


def test_html_is_self_contained_and_shows_disagreements_side_by_side(cells, tmp_path):
    page = report.write_out(cells, tmp_path)["html"].read_text()
    assert "<script" not in page and "<link" not in page and "src=\"http" not in page
    assert "&lt;q1&gt; &amp; more" in page and "<q1>" not in page  # prompts are escaped
    # item 1: only the adapter is right; its row holds the prompt and both answers
    items = page.split("Items where the cells disagree", 1)[1]
    row = items.split("<tr><td>1</td>", 1)[1].split("</tr>", 1)[0]
    assert "math says 1" in row and "base says 1" in row
    assert "7 items disagree" in page and "0.125" in page


def test_the_plot_is_a_png_inlined_in_the_report(cells, tmp_path):
    pytest.importorskip("matplotlib")
    written = report.write_out(cells, tmp_path)
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in written["html"].read_text()


def test_without_matplotlib_the_rest_is_written(cells, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written = report.write_out(cells, tmp_path)
    assert "png" not in written and written["html"].exists()
    assert "pip install matplotlib" in capsys.readouterr().err


def test_backends_are_compared_with_the_first_backend():
    base = [True, True, False, True]
    cells = [cell("m", "base", base, backend="transformers"),
             cell("m", "base", [True, False, False, False], backend="llamacpp")]
    (comp,) = report.comparisons(cells)
    assert comp["kind"] == "backend vs first backend"
    assert (comp["a"]["backend"], comp["b"]["backend"], comp["only_a"], comp["only_b"]) == ("llamacpp", "transformers", 0, 2)
    page = report.render_html(cells, None)
    assert "m | base | llamacpp vs m | base | transformers — 2 items disagree" in page
