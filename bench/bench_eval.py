"""adaptrix compare: a model's adapters in mixed-adapter batches vs the same cells one after another, in one run.

Cells: the embedded SmolLM2-135M-Instruct with base + 3 adapters (math_specialist, pirate_style and their
composition math_specialist=0.5+pirate_style=0.5) on the `math` suite, transformers backend, greedy, no cache.

- together: one pass over the items, each batch holding N items for all four adapters
  (``generate_batch(prompts, adapters=[...])``), what ``adaptrix compare`` does;
- one after another: the same runner with ``together=False`` (``--sequential``): each cell alone, batches of
  N items of one adapter (N from --batch-sizes).

Both modes run on the same loaded engine, interleaved (--repeats rounds), and must give the same answers.
Prints each mode's median seconds and the ratio; the issue asks for at least 2.5x.

    python bench/bench_eval.py [--limit 32] [--batch-sizes 1,4,8] [--max-new-tokens 48] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=32, help="items of the math suite")
    ap.add_argument("--batch-sizes", default="1,4,8", help="items per batch (per adapter when together), comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--with-loading", action="store_true",
                    help="also time what a user runs: four `adaptrix eval` runs (each loads the model and its "
                    "adapter) vs one `adaptrix compare` (one load)")
    args = ap.parse_args(argv)

    import torch

    from adaptrix import Engine
    from adaptrix.evaluation import runner
    from adaptrix.evaluation.matrix import parse_adapters
    from adaptrix.evaluation.runner import EvalOptions, run_matrix
    from adaptrix.evaluation.suites import load_suite
    from machine import cpu_name

    torch.set_num_threads(args.threads)
    engine = Engine(backend="transformers", device=args.device, dtype=args.dtype, progress=False,
                    adapters_dir=str(ROOT / "examples/adapters"))
    engine.initialize()

    @contextlib.contextmanager
    def loaded(model, backend, options):
        yield engine

    original_open = runner.open_engine
    runner.open_engine = loaded  # both modes share the loaded model: only the evaluation itself is timed
    specs = parse_adapters("base,math_specialist,pirate_style,math_specialist=0.5+pirate_style=0.5")
    task = load_suite("math", limit=args.limit, max_new_tokens=args.max_new_tokens)
    engine_options = {"adapters_dir": str(ROOT / "examples/adapters"), "device": args.device, "dtype": args.dtype}
    runner.load_specs(engine, specs, engine_options["adapters_dir"])  # adapters loaded before any timing
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(f"\nadaptrix compare, SmolLM2-135M-Instruct, transformers {args.dtype} on {args.device} ({device}), "
          f"{args.threads} torch thread(s), load {os.getloadavg()[0]:.1f} at start")
    print(f"4 cells (base + 3 adapters) x {args.limit} math items, {args.max_new_tokens} new tokens at most, "
          f"median of {args.repeats} interleaved rounds\n")
    print("| items per batch | rows per forward (sequential / together) | one after another (--sequential) s | "
          "together s | speed-up | same answers |\n|---|---|---|---|---|---|")
    results, all_same = [], True
    for size in [int(x) for x in args.batch_sizes.split(",")]:
        times: dict[str, list[float]] = {"together": [], "one after another": []}
        answers = {}
        for _ in range(args.repeats):
            for mode, together in (("one after another", False), ("together", True)):
                opts = EvalOptions(batch_size=size, together=together, engine_options=engine_options)
                start = time.perf_counter()
                cells = run_matrix([None], specs, ["transformers"], [task], opts)
                times[mode].append(time.perf_counter() - start)
                answers[mode] = [[r.output for r in c.items] for c in cells]
        same = answers["together"] == answers["one after another"]
        all_same &= same
        t, s = statistics.median(times["together"]), statistics.median(times["one after another"])
        print(f"| {size} | {size} / {4 * size} | {s:.1f} | {t:.1f} | {s / t:.2f}x | {same} |", flush=True)
        if args.with_loading:
            runner.open_engine = original_open  # each run loads the model itself, as the CLI does
            try:
                loaded_t, loaded_s = with_loading(size, specs, task, engine_options)
            finally:
                runner.open_engine = loaded
            print(f"| {size} (with loading) | {size} / {4 * size} | {loaded_s:.1f} (4 runs) | {loaded_t:.1f} (1 run) | "
                  f"{loaded_s / loaded_t:.2f}x | - |", flush=True)
        results.append({"batch_size": size, "together_s": times["together"],
                        "sequential_s": times["one after another"], "ratio": s / t, "same_answers": same})
    print(f"\nload {os.getloadavg()[0]:.1f} at end; scores: " + ", ".join(f"{c.adapter} {c.correct}/{c.n}" for c in cells))
    print(json.dumps(results))
    engine.cleanup()
    return 0 if all_same else 1


def with_loading(size, specs, task, engine_options) -> tuple[float, float]:
    """Seconds of one compare run (loads the model once, adapters together) and of four eval runs (one per
    cell, each loading the model and its adapter)."""
    from adaptrix.evaluation.runner import EvalOptions, run_matrix

    timed = {}
    options = EvalOptions(batch_size=size, together=True, engine_options=engine_options)
    for mode, groups in (("together", [specs]), ("separate", [[s] for s in specs])):
        start = time.perf_counter()
        for group in groups:
            run_matrix([None], group, ["transformers"], [task], options)
        timed[mode] = time.perf_counter() - start
    return timed["together"], timed["separate"]


if __name__ == "__main__":
    sys.exit(main())
