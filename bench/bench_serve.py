"""Benchmark ``adaptrix serve`` on the embedded model: concurrency 1/4/8, mixed adapters vs one adapter.

Prints aggregate tokens/s, time to first token p50/p95 and request latency,
next to one-client-at-a-time on the same server, and next to llama-cpp-python's
own OpenAI server on the same GGUF when ``llama_cpp.server`` is installed.

    python bench/bench_serve.py [--backend transformers|llamacpp|auto] [--tokens 48] [--requests 16] [--threads 2]

``--threads`` is torch's thread count on the transformers backend; on llama.cpp the
process is pinned to that many CPUs (llama.cpp sizes its pool from them).
"""

from __future__ import annotations

import argparse
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


def one(url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed request."""
    import httpx

    start = time.perf_counter()
    first, count = None, 0
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            import json

            msg = json.loads(line[6:])
            if msg.get("choices") and msg["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if msg.get("usage"):
                count = msg["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - start, count


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


def main() -> int:
    import functools
    import builtins

    print = functools.partial(builtins.print, flush=True)  # noqa: A001 - rows show as they are measured
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="transformers", choices=("transformers", "llamacpp", "auto"))
    ap.add_argument("--no-llamacpp-server", action="store_true", help="skip llama-cpp-python's own server")
    args = ap.parse_args()
    if args.backend == "transformers":
        import torch

        torch.set_num_threads(args.threads)
    elif hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    from support.server import LiveServer

    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    ads = REPO / "examples" / "adapters"

    def make():
        e = Engine(backend=args.backend, adapters_dir=str(ads), progress=False)
        e.initialize()
        return e

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, load average {load} at start, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; backend {args.backend}, {args.threads} threads, "
          f"{args.tokens} new tokens, {args.requests} requests per row")
    print(f"{'server':<28}{'models':<10}{'clients':>8}{'tok/s':>9}{'ttft p50':>10}{'ttft p95':>10}{'lat p50':>9}")
    mixed = ["base", "math_specialist", "pirate_style", "base"]
    with LiveServer(create_app(make, ServeOptions(adapters_dir=str(ads), max_batch=8))) as srv:
        import httpx

        print(f"adaptrix serve backend: {httpx.get(srv.url + '/health').json().get('backend')}")
        run(srv.url, ["base"], 1, 1, 4)  # warm-up
        for label, models in (("mixed", mixed), ("single", ["math_specialist"])):
            for clients in (1, 4, 8):
                r = run(srv.url, models, clients, args.requests, args.tokens)
                print(f"{'adaptrix serve':<28}{label:<10}{clients:>8}{r['tok/s']:>9.1f}{r['ttft p50']:>10.2f}"
                      f"{r['ttft p95']:>10.2f}{r['latency p50']:>9.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.no_llamacpp_server:
        return 0
    try:
        import llama_cpp.server.app  # noqa: F401  (needs llama-cpp-python[server]: fastapi, sse-starlette)
    except ImportError as exc:
        print(f"llama-cpp-python's server is not installed ({exc}): no llama_cpp.server row")
        return 0
    from adaptrix.default_model import default_model_path
    from support.server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
                             "--port", str(port), "--n_threads", str(args.threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if proc.poll() is not None:
                print(f"llama_cpp.server exited with {proc.returncode}: no llama_cpp.server row")
                return 0
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for clients in (1, 4, 8):
            r = run(url, ["base"], clients, args.requests, args.tokens)
            print(f"{'llama_cpp.server':<28}{'base':<10}{clients:>8}{r['tok/s']:>9.1f}{r['ttft p50']:>10.2f}"
                  f"{r['ttft p95']:>10.2f}{r['latency p50']:>9.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
