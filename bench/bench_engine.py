"""Engine benchmarks on the embedded SmolLM2-135M-Instruct (transformers backend), printed side by side in one run.

1. Framework overhead: greedy tokens/s of ``engine.generate`` vs raw
   ``model.generate`` on the same model and prompt ids (target ratio >= 0.98).
2. Model load: cold GGUF load (fresh temporary cache: conversion included) vs
   the second, cached load (target < 2 s including the tokenizer).
3. Decode tokens/s and the fraction of the memory-bandwidth bound
   (weights bytes read per token / measured copy bandwidth).

Run: ``.venv/bin/python bench/bench_engine.py [--repeats N] [--tokens N] [--skip-cold] [--threads N]``.
On a machine shared with other busy processes, ``--threads 1`` avoids torch's
spin-waiting threads fighting them (3-4x faster decode on two busy cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "What is machine learning?"


def engine_vs_raw(engine, tokens: int, repeats: int) -> dict:
    import torch

    tok, model = engine.tokenizer, engine.model
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)

    def raw():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens)
        return out.shape[1] - ids.shape[1]

    def ours():
        return len(engine.generate_detailed(PROMPT, temperature=0, max_new_tokens=tokens).token_ids)

    ours(), raw()  # warm-up
    rates = {"engine": [], "raw": []}
    for i in range(repeats):
        order = [("engine", ours), ("raw", raw)] if i % 2 == 0 else [("raw", raw), ("engine", ours)]
        for name, fn in order:  # interleaved, so drift on a shared machine hits both alike
            start = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - start))
    e, r = statistics.median(rates["engine"]), statistics.median(rates["raw"])
    return {"engine_tps": e, "raw_tps": r, "ratio": e / r, "tokens": n}


def load_times(skip_cold: bool) -> dict:
    from adaptrix import Engine
    from adaptrix.models.default_model import default_model_path

    result = {}
    with tempfile.TemporaryDirectory(prefix="adaptrix-bench-cache-") as tmp:
        old = os.environ.get("ADAPTRIX_CACHE")
        if not skip_cold:
            os.environ["ADAPTRIX_CACHE"] = tmp
        try:
            if not skip_cold:
                start = time.perf_counter()
                e = Engine(progress=False, backend="transformers")
                e.initialize()
                e.cleanup()
                result["cold"] = time.perf_counter() - start
            cached = []
            for _ in range(3):
                start = time.perf_counter()
                e = Engine(progress=False, backend="transformers")
                e.initialize()
                cached.append(time.perf_counter() - start)
                e.cleanup()
            result["cached"] = statistics.median(cached)
        finally:
            if old is None:
                os.environ.pop("ADAPTRIX_CACHE", None)
            else:
                os.environ["ADAPTRIX_CACHE"] = old
    code = (
        "import time; t=time.perf_counter(); from adaptrix import Engine; "
        "e=Engine(progress=False, backend='transformers'); e.initialize(); print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    result["fresh_process"] = float(out.strip().splitlines()[-1])
    result["gguf_bytes"] = default_model_path().stat().st_size
    return result


def bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    import torch

    n = mib * 2**20 // 4
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best / 1e9  # read + write


def decode_rate(engine, tokens: int, repeats: int) -> dict:
    import torch

    tok, model = engine.tokenizer, engine.model
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)

    def timed(n):
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n)
        return time.perf_counter() - start

    prefill = statistics.median(timed(1) for _ in range(repeats))
    full = statistics.median(timed(tokens) for _ in range(repeats))
    tps = (tokens - 1) / (full - prefill)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = bandwidth_gbs()
    bound = bw * 1e9 / weight_bytes
    return {"tps": tps, "weight_bytes": weight_bytes, "bandwidth": bw, "bound_tps": bound, "fraction": tps / bound}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold GGUF conversion (about a minute)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from adaptrix import Engine
    from adaptrix.errors import ModelConfigError

    try:
        engine = Engine(progress=False, backend="transformers")
        engine.initialize()
    except ModelConfigError as exc:
        print(f"skipped: {exc}")
        return 0
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}; model {engine.get_model_info()['model_id']}")
    over = engine_vs_raw(engine, args.tokens, args.repeats)
    dec = decode_rate(engine, args.tokens, args.repeats)
    engine.cleanup()
    loads = load_times(args.skip_cold)

    rows = [
        ("greedy tokens/s, engine.generate", f"{over['engine_tps']:.1f}", ""),
        ("greedy tokens/s, raw model.generate", f"{over['raw_tps']:.1f}", ""),
        ("  ratio engine / raw", f"{over['ratio']:.3f}", ">= 0.98"),
        ("cold GGUF load (conversion, fresh cache)", f"{loads['cold']:.1f} s" if "cold" in loads else "skipped", ""),
        ("cached load incl. tokenizer", f"{loads['cached']:.2f} s", "< 2 s"),
        ("  cached load in a fresh process (+imports)", f"{loads['fresh_process']:.2f} s", ""),
        ("decode tokens/s (prefill excluded)", f"{dec['tps']:.1f}", ""),
        ("weights read per token", f"{dec['weight_bytes'] / 1e6:.0f} MB", ""),
        ("copy bandwidth (read+write)", f"{dec['bandwidth']:.1f} GB/s", ""),
        ("bandwidth-bound tokens/s", f"{dec['bound_tps']:.1f}", ""),
        ("  fraction of the bound", f"{dec['fraction']:.2f}", ""),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(w)}  {'value':>10}  target")
    for name, value, target in rows:
        print(f"{name.ljust(w)}  {value:>10}  {target}")
    print(f"({args.repeats} repeats, medians, {over['tokens']} new tokens per greedy run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
