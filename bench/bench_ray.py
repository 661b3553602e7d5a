"""Benchmark adaptrix-ray against plain ``adaptrix serve`` on this machine, in one run.

1. Ray's overhead: one replica (one llama.cpp thread) against ``adaptrix serve --threads 1``, 8 clients;
   aggregate tokens/s (the ratio is Ray's share of the cost) and time to first token.
2. Two replicas x one thread against one replica x two threads, 8 clients.

Rounds alternate (plain, Ray, plain, Ray...; 2x1, 1x2, 2x1, 1x2) so a neighbour's load hits both sides;
each figure is the median over rounds. The embedded SmolLM2 on llama.cpp, streamed chat requests, base
model and the two example adapters in turn. The local Ray cluster runs on 127.0.0.1 only and is stopped
at the end (the plain server is its own process, as ``adaptrix serve`` runs).

    python bench/bench_ray.py [--tokens 32] [--requests 24] [--clients 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_name  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
EXAMPLES = REPO / "examples" / "adapters"
PROMPTS = ["What is 25 times 8?", "Tell me about the sea.", "Name three colours.", "What is machine learning?"]
MODELS = ["base", "math_specialist", "pirate_style"]


def load(url: str, clients: int, requests: int, tokens: int) -> dict:
    """``requests`` streamed chat requests from ``clients`` threads: tokens/s, TTFT p50, replicas seen."""
    import httpx

    def one(i: int):
        body = {"model": MODELS[i % len(MODELS)], "messages": [{"role": "user", "content": PROMPTS[i % 4]}],
                "max_tokens": tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first, used, replica = None, 0, None
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
            r.raise_for_status()
            replica = r.headers.get("x-adaptrix-replica")
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    used = data["usage"]["completion_tokens"]
                if first is None and data["choices"] and data["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
        return first or 0.0, used, replica

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {"tok_s": sum(r[1] for r in results) / wall, "ttft": statistics.median(r[0] for r in results),
            "replicas": len({r[2] for r in results if r[2]})}


def wait_ready(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready")


def deploy(replicas: int, threads: int, port: int) -> str:
    from ray import serve

    from adaptrix_ray.application import build
    from adaptrix_ray.config import from_args

    config = from_args({"backend": "llamacpp", "threads": threads, "num_replicas": replicas, "num_cpus": threads,
                        "adapters_dir": str(EXAMPLES), "max_adapters_per_replica": 3})
    # the old application goes first: on two CPUs a rolling update has no room for new replicas beside it
    serve.delete("adaptrix")
    serve.run(build(config), name="adaptrix", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return url


def row(name: str, runs: list[dict], base: list[dict] | None = None) -> str:
    tok = statistics.median(r["tok_s"] for r in runs)
    ttft = statistics.median(r["ttft"] for r in runs) * 1000
    ratio = ""
    if base:
        ratio = f"{tok / statistics.median(r['tok_s'] for r in base):6.2f}x"
    seen = max(r["replicas"] for r in runs)
    return f"{name:<34} {tok:8.1f} {ratio:>8} {ttft:9.0f} {seen:>9}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
        from ray import serve
    except ImportError:
        print("bench_ray: ray[serve] is not installed (pip install adaptrix-ray); skipped")
        return 0
    from support.server import free_port

    from adaptrix_ray.cluster import connect, disconnect

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{args.clients} clients, {args.requests} streamed chat requests of {args.tokens} tokens per run "
          f"(base, math_specialist, pirate_style in turn), median of {args.rounds} alternating rounds\n")
    plain_port, ray_port = free_port(), free_port()
    plain = subprocess.Popen([sys.executable, "-m", "adaptrix.cli.main", "serve", "--backend", "llamacpp",
                              "--threads", "1", "--port", str(plain_port), "--adapters-dir", str(EXAMPLES)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    local = connect(None, num_cpus=2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
        plain_url = f"http://127.0.0.1:{plain_port}"
        wait_ready(plain_url)
        one = deploy(1, 1, ray_port)
        runs: dict[str, list[dict]] = {"plain": [], "ray1": [], "2x1": [], "1x2": []}
        load(plain_url, args.clients, 6, args.tokens)  # warm both: adapters loaded, caches filled
        load(one, args.clients, 6, args.tokens)
        for _ in range(args.rounds):
            runs["plain"].append(load(plain_url, args.clients, args.requests, args.tokens))
            runs["ray1"].append(load(one, args.clients, args.requests, args.tokens))
            print(f"  plain: {runs['plain'][-1]}\n  ray1: {runs['ray1'][-1]}", flush=True)
        plain.terminate()
        plain.wait(timeout=60)
        for _ in range(args.rounds):
            for name, (replicas, threads) in (("2x1", (2, 1)), ("1x2", (1, 2))):
                url = deploy(replicas, threads, ray_port)
                load(url, args.clients, 6, args.tokens)
                runs[name].append(load(url, args.clients, args.requests, args.tokens))
                print(f"  {name}: {runs[name][-1]}", flush=True)
        print(f"{'':<34} {'tok/s':>8} {'ratio':>8} {'TTFT ms':>9} {'replicas':>9}")
        print(row("adaptrix serve --threads 1", runs["plain"]))
        print(row("Ray, 1 replica x 1 thread", runs["ray1"], runs["plain"]))
        print(row("Ray, 1 replica x 2 threads", runs["1x2"]))
        print(row("Ray, 2 replicas x 1 thread", runs["2x1"], runs["1x2"]))
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if plain.poll() is None:
            plain.terminate()
            plain.wait(timeout=60)
        disconnect("adaptrix", local)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
