"""Start-up cost of plugin discovery, side by side with importing torch.

Prints the median wall time of `adaptrix plugins list` (all installed plugins)
and of `python -c "import torch"`, each a fresh process, in one run.
Target: `adaptrix plugins list` under 0.3 s median.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 7


def median_seconds(cmd: list[str]) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    rows = [
        ("adaptrix plugins list", [sys.executable, "-m", "adaptrix", "plugins", "list"]),
        ("adaptrix detect <config.json>", None),
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
        ("python -c 'pass' (interpreter)", [sys.executable, "-c", "pass"]),
    ]
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "max_position_embeddings": 40960}, f)
    rows[1] = (rows[1][0], [sys.executable, "-m", "adaptrix", "detect", f.name])
    print(f"{'command':34} {'median s':>9}   (runs={RUNS}, fresh process each)")
    for label, cmd in rows:
        print(f"{label:34} {median_seconds(cmd):9.3f}")


if __name__ == "__main__":
    main()
