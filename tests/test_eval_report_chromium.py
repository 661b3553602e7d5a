"""report.html as a person sees it: opened in Debian's headless Chromium.

The page is loaded from disk (``file://``) with a copy that adds one probe
script at the end; the probe reads what the browser rendered (the table rows'
text, the plot's decoded size, the disagreement headings) into the DOM, which
``--dump-dom`` prints. The oracle is the canned cells (counted by hand) and
the PNG's own header (its width and height). ``screenshot`` is also how the
screenshot in docs/evaluation.md is taken::

    python tests/test_eval_report_chromium.py REPORT.html docs/evaluation-report.png
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

PROBE = """<script>
window.addEventListener('load', async () => {
  const vis = el => el.offsetWidth > 0 && el.offsetHeight > 0;
  const img = document.querySelector('img');
  let pixels = null, decoded = true;
  try { await img.decode(); } catch (e) { decoded = String(e); }
  if (img && img.naturalWidth) {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    pixels = [];
    for (let y = 0.05; y < 1; y += 0.1) for (let x = 0.05; x < 1; x += 0.1) {
      const px = Math.floor(x * img.naturalWidth), py = Math.floor(y * img.naturalHeight);
      pixels.push([px, py, ...ctx.getImageData(px, py, 1, 1).data.slice(0, 3)]);
    }
  }
  const rows = [...document.querySelectorAll('table')[0].rows].filter(vis)
    .map(r => [...r.cells].map(c => c.innerText.trim()));
  const out = {
    img: img ? {w: img.naturalWidth, h: img.naturalHeight, complete: img.complete, shown: img.offsetWidth, decoded: decoded, pixels: pixels} : null,
    rows: rows,
    h2: [...document.querySelectorAll('h2')].filter(vis).map(h => h.innerText.trim()),
    h3: [...document.querySelectorAll('h3')].filter(vis).map(h => h.innerText.trim()),
    comparisons: [...document.querySelectorAll('table')[1].rows].slice(1).map(r => [...r.cells].map(c => c.innerText.trim())),
    first_disagreement: [...document.querySelectorAll('table.items')[0].rows].slice(1, 2)
      .map(r => [...r.cells].map(c => [c.innerText.trim(), getComputedStyle(c).backgroundColor]))[0],
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str, timeout: float = 90) -> str:
    done = subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=timeout)
    return done.stdout


def rendered(report_html: Path, tmp: Path) -> dict:
    """What Chromium rendered of ``report_html`` (read by the probe script after the load event)."""
    probe = tmp / "probe.html"
    probe.write_text(report_html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; Chromium printed: {dom[:500]!r}"
    return json.loads(html.unescape(found.group(1)))


def screenshot(report_html: Path, png: Path, width: int = 1400, height: int = 2400) -> Path:
    """A screenshot of the top ``height`` pixels of ``report_html`` as Chromium draws it."""
    chromium(f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}", Path(report_html).resolve().as_uri())
    return Path(png)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def report_dir(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("matplotlib")
    from adaptrix.evaluation import report
    from adaptrix.evaluation.matrix import Cell, ItemResult

    def cell(adapter, backend, outcomes):
        items = tuple(ItemResult(i, f"What is {i} + {i}?", f"{adapter}/{backend} says {2 * i + (not ok)}",
                                 2 * i + (not ok), ok) for i, ok in enumerate(outcomes))
        return Cell("default", adapter, backend, "math", "number", items)

    T, F = True, False
    cells = [cell("base", "transformers", [T, F, F, T, F, F, F, F, T, F]),      # 3/10
             cell("math_specialist", "transformers", [T, T, T, T, T, T, F, T, F, T]),  # 8/10
             cell("base", "llamacpp", [T, F, F, T, F, F, F, T, T, F])]          # 4/10
    out = tmp_path / "out"
    report.write_out(cells, out)
    return out


def test_the_report_shows_the_table_plot_and_disagreements_in_chromium(report_dir, tmp_path):
    seen = rendered(report_dir / "report.html", tmp_path)

    # the table: a header and one visible row per cell, with the scores counted by hand
    header, *rows = seen["rows"]
    assert header[:7] == ["model", "adapter", "backend", "task", "score", "95% CI", "n"]
    assert [r[:7] for r in rows] == [
        ["default", "base", "transformers", "math", "30.0%", "[10.8, 60.3]", "10"],
        ["default", "math_specialist", "transformers", "math", "80.0%", "[49.0, 94.3]", "10"],
        ["default", "base", "llamacpp", "math", "40.0%", "[16.8, 68.7]", "10"],
    ]

    # the plot: decoded by the browser at the PNG's own size, and drawn
    # (the oracle: the PNG file, decoded by Pillow; 100 pixels on a grid must match what the browser decoded)
    from PIL import Image

    img = seen["img"]
    with Image.open(report_dir / "scores.png") as png:
        rgb = png.convert("RGB")
        assert (img["w"], img["h"], img["complete"], img["decoded"]) == (*png.size, True, True)
    assert img["shown"] > 100
    assert [tuple(p[2:]) for p in img["pixels"]] == [rgb.getpixel((p[0], p[1])) for p in img["pixels"]]
    assert len({tuple(p[2:]) for p in img["pixels"]}) > 2  # a plot, not a blank

    # the paired tests and the items where the cells disagree
    assert seen["h2"][:4] == ["Scores", "Plot", "Differences (exact McNemar test on paired items)",
                              "Items where the cells disagree"]
    assert seen["h3"] == [
        "math: default | math_specialist | transformers vs default | base | transformers — 7 items disagree",
        "math: default | base | llamacpp vs default | base | transformers — 1 items disagree",
    ]
    adapter_row = next(c for c in seen["comparisons"] if c[0] == "adapter vs base")
    assert adapter_row[5:] == ["+50.0 pts", "6 / 1", "0.125"]  # exact McNemar: 2 * P(X <= 1 | n=7)
    # item 1, side by side: the prompt, the adapter's right answer (green), base's wrong one (red)
    (index, _), (prompt, _), (right, right_bg), (wrong, wrong_bg) = seen["first_disagreement"]
    assert (index, prompt) == ("1", "What is 1 + 1?")
    assert right.startswith("math_specialist/transformers says 2") and "extracted: 2" in right
    assert wrong.startswith("base/transformers says 3") and "extracted: 3" in wrong
    assert right_bg != wrong_bg


def test_screenshot_of_the_report(report_dir, tmp_path):
    shot = screenshot(report_dir / "report.html", tmp_path / "report.png", height=900)
    assert png_size(shot.read_bytes()) == (1400, 900)
    assert shot.stat().st_size > 10_000  # more than a blank page


if __name__ == "__main__":
    if not shutil.which(CHROMIUM):
        sys.exit(f"{CHROMIUM} not found")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
