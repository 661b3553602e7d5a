"""Benchmark: what an adapter load costs the other requests of a running ``adaptrix serve`` (issue 15, item 7).

On the embedded SmolLM2 (llama.cpp, one thread, this process pinned to one CPU), a 1,200-token stream on
``math_specialist`` runs; meanwhile a 5-token base request is timed alone, then again while a load of a new
adapter name (``pirate_style`` under a new name) is pending, and the load itself is timed. Printed side by
side per run: before the fix both waited for the whole stream.

    python bench/bench_adapter_change.py [--runs 2] [--tokens 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
EXAMPLES = str(REPO / "examples" / "adapters")
STORY = "Write a very long, detailed story about the history of the ocean, chapter by chapter."


def main() -> None:
    import httpx

    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app
    from support.server import LiveServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1200)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    def make():
        engine = Engine(backend="llamacpp", adapters_dir=EXAMPLES, progress=False, threads=1)
        engine.initialize()
        return engine

    app = create_app(make, ServeOptions(adapters_dir=EXAMPLES, enable_adapter_loading=True))
    with LiveServer(app) as srv:
        url = srv.url

        def chat(model: str, n: int) -> float:
            start = time.monotonic()
            r = httpx.post(url + "/v1/chat/completions", timeout=600, json={
                "model": model, "messages": [{"role": "user", "content": "Name three colors."}], "temperature": 0,
                "max_tokens": n})
            assert r.status_code == 200, r.text
            return time.monotonic() - start

        chat("base", 5)
        chat("math_specialist", 5)
        print("stream tokens | base 5 tokens alone (s) | with a load pending (s) | the load (s) | stream left (s)")
        for run in range(args.runs):
            first, out = threading.Event(), {}

            def stream() -> None:
                with httpx.stream("POST", url + "/v1/chat/completions", timeout=600, json={
                        "model": "math_specialist", "temperature": 0, "max_tokens": args.tokens, "stream": True,
                        "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": STORY}]}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            first.set()
                            data = json.loads(line[6:])
                            if data.get("usage"):
                                out["tokens"] = data["usage"]["completion_tokens"]
                out["end"] = time.monotonic()

            def load(name: str) -> float:
                start = time.monotonic()
                r = httpx.post(url + "/v1/load_lora_adapter", timeout=600,
                               json={"lora_name": name, "lora_path": "pirate_style"})
                assert r.status_code == 200, r.text
                return time.monotonic() - start

            with ThreadPoolExecutor(2) as pool:
                streamed = pool.submit(stream)
                assert first.wait(120)
                alone = chat("base", 5)
                started = time.monotonic()
                loading = pool.submit(load, f"pirate{run}")
                time.sleep(0.05)
                during = chat("base", 5)
                load_s = loading.result()
                streamed.result()
            httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": f"pirate{run}"}, timeout=600)
            print(f"{out.get('tokens')} | {alone:.2f} | {during:.2f} | {load_s:.2f} | {out['end'] - started:.1f}")


if __name__ == "__main__":
    main()
