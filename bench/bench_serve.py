"""Benchmark ``adaptrix serve`` on the embedded model: concurrency 1/4/8, mixed adapters vs one adapter.

"mixed" cycles the base model and four adapters: ``math_specialist`` and
``pirate_style`` from ``examples/adapters``, and two more made from them for
this run (the same rank and targets, every ``lora_B`` halved: different
weights, different answers), so a batch holds up to four adapters at once.

Prints aggregate tokens/s, time to first token p50/p95 and request latency,
next to one-client-at-a-time on the same server, and next to llama-cpp-python's
own OpenAI server on the same GGUF when ``llama_cpp.server`` is installed.

    python bench/bench_serve.py [--backend transformers|llamacpp|auto] [--tokens 48] [--requests 32] [--threads 2]
                                [--repeat 3] [--clients 1,4,8] [--no-llamacpp-server]

Each server runs as its own process (``adaptrix serve --threads N``, and
``python -m llama_cpp.server --n_threads N``), the clients in this one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_name as _cpu_name  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
PROMPTS = ["What is 25 times 8?", "Tell me about the sea.", "Name three colours.", "What is machine learning?"]


#: ``python -m llama_cpp.server`` with the model loaded as adaptrix's LlamaRuntime loads it: without
#: llama.cpp's CPU repacking buffers (their AMX kernels die with SIGILL in this project's VM).
LLAMA_SERVER = f"""
import runpy, sys
sys.path.insert(0, {str(REPO / "tests")!r})
from support.llamacpp import no_extra_buffers
sys.argv[0] = "llama_cpp.server"
with no_extra_buffers():
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def adapters_folder(folder: Path) -> Path:
    """``folder`` holding the two example adapters and a half-strength copy of each (four in all)."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    examples = REPO / "examples" / "adapters"
    for name in ("math_specialist", "pirate_style"):
        shutil.copytree(examples / name, folder / name)
        half = folder / f"{name.split('_')[0]}_half"
        shutil.copytree(examples / name, half)
        weights = load_file(str(half / "adapter_model.safetensors"))
        save_file({k: (v * np.float32(0.5)).astype(v.dtype) if "lora_B" in k else v for k, v in weights.items()},
                  str(half / "adapter_model.safetensors"))
    return folder


def one(url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed request.

    Completion tokens come from the final ``usage`` chunk; a server that sends
    none (llama_cpp.server ignores ``stream_options``) sends one chunk per token.
    """
    import json

    import httpx

    start = time.perf_counter()
    first, count, chunks = None, None, 0
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if msg.get("choices") and msg["choices"][0]["delta"].get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
            if msg.get("usage"):
                count = msg["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - start, chunks if count is None else count


def run(url: str, models: list[str], clients: int, requests: int, tokens: int) -> dict:
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda j: one(url, j[0], j[1], tokens), jobs))
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {
        "tok/s": sum(r[2] for r in results) / wall,
        "ttft p50": statistics.median(ttft),
        "ttft p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
        "latency p50": statistics.median(r[1] for r in results),
    }


@contextlib.contextmanager
def server_process(cmd: list[str], ready_path: str, what: str):
    """Run ``cmd`` (a server on a free port, appended as ``--port P``) until the block ends; yields its URL."""
    import httpx

    from support.server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited with status {proc.returncode} before it was ready: {' '.join(cmd)}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def rows(url: str, label: str, sets: list[tuple[str, list[str]]], args) -> list[dict]:
    """Each (models, clients) row ``--repeat`` times, the repeats interleaved (a slow spell of a shared
    machine hits every row alike); prints each run, then the median of each row's runs."""
    run(url, [sets[0][1][0]], 1, 1, 4)  # warm-up
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeat):
        for models_label, models in sets:
            for clients in args.clients:
                r = run(url, models, clients, args.requests, args.tokens)
                runs.setdefault((models_label, clients), []).append(r)
                if args.repeat > 1:
                    print(f"  run {rep + 1}: {label} {models_label} {clients} clients: {r['tok/s']:.1f} tok/s, "
                          f"TTFT p50 {r['ttft p50']:.2f} s", flush=True)
    out = []
    for (models_label, clients), results in runs.items():
        r = {k: statistics.median(x[k] for x in results) for k in results[0]}
        r.update(server=label, models=models_label, clients=clients, runs=len(results))
        out.append(r)
        print(f"{label:<28}{models_label:<10}{clients:>8}{r['tok/s']:>9.1f}{r['ttft p50']:>10.2f}"
              f"{r['ttft p95']:>10.2f}{r['latency p50']:>9.2f}", flush=True)
    for models_label, _ in sets:  # the targets: 8 clients against one at a time, same server
        one, eight = (next((r for r in out if (r["models"], r["clients"]) == (models_label, c)), None) for c in (1, 8))
        if one and eight:
            paired = [e["tok/s"] / o["tok/s"] for o, e in zip(runs[(models_label, 1)], runs[(models_label, 8)])]
            print(f"  {label} {models_label}: 8 clients {eight['tok/s'] / one['tok/s']:.2f}x the throughput of one at a "
                  f"time (run by run: {', '.join(f'{x:.2f}x' for x in paired)}); TTFT p50 "
                  f"{eight['ttft p50'] / one['ttft p50']:.2f}x idle", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, or llama.cpp threads")
    ap.add_argument("--backend", default="transformers", choices=("transformers", "llamacpp", "auto"))
    ap.add_argument("--no-llamacpp-server", action="store_true", help="skip llama-cpp-python's own server")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row, interleaved; the table shows medians")
    ap.add_argument("--clients", type=lambda v: [int(c) for c in v.split(",")], default=[1, 4, 8],
                    help="concurrent clients per row, comma-separated (default 1,4,8)")
    args = ap.parse_args()

    import tempfile

    from adaptrix.models.default_model import default_model_path

    ads = adapters_folder(Path(tempfile.mkdtemp(prefix="adaptrix-bench-serve-")))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, load average {load} at start, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; backend {args.backend}, {args.threads} threads, "
          f"{args.tokens} new tokens, {args.requests} requests per row, {args.repeat} run(s) per row (median); "
          "each server is its own process")
    print(f"{'server':<28}{'models':<10}{'clients':>8}{'tok/s':>9}{'ttft p50':>10}{'ttft p95':>10}{'lat p50':>9}")
    mixed = ["base", "math_specialist", "pirate_style", "math_half", "pirate_half"]
    cmd = [sys.executable, "-m", "adaptrix", "serve", "--backend", args.backend, "--threads", str(args.threads),
           "--adapters-dir", str(ads), "--max-batch", "8"]
    with server_process(cmd, "/health", "adaptrix serve") as url:
        import httpx

        print(f"adaptrix serve backend: {httpx.get(url + '/health').json().get('backend')}", flush=True)
        rows(url, "adaptrix serve", [("mixed", mixed), ("single", ["math_specialist"])], args)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.no_llamacpp_server:
        return 0
    try:
        import llama_cpp.server.app  # noqa: F401  (needs llama-cpp-python[server]: fastapi, sse-starlette)
    except ImportError as exc:
        print(f"llama-cpp-python's server is not installed ({exc}): no llama_cpp.server row")
        return 0
    cmd = [sys.executable, "-c", LLAMA_SERVER, "--model", str(default_model_path()), "--n_threads",
           str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "4096",
           "--interrupt_requests", "False"]  # queue concurrent requests (by default a new one cuts the running one)
    with server_process(cmd, "/v1/models", "llama_cpp.server") as url:
        rows(url, "llama_cpp.server", [("base", ["base"])], args)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
