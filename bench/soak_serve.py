"""Soak ``adaptrix serve``: several clients for minutes, mixed adapters, streamed and not, with disconnects.

Every greedy answer is compared with the same request answered alone (asked
first, one at a time, on the same server), so the soak checks the server's
promise that a temperature-0 answer does not depend on what decodes beside it.
It also samples the server's RSS and open file descriptors over time.

    python bench/soak_serve.py [--backend llamacpp|transformers] [--clients 6] [--seconds 300]
                               [--tokens 32] [--serve-arg=--batch-invariant ...]

Prints one line per sample (time, requests done, RSS MiB, fds) and a summary:
answers compared, answers that differ (each shown), disconnects, HTTP errors by status.
Exits 1 when an answer differs or a request got a 5xx.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_serve import adapters_folder, server_process  # bench/
from machine import cpu_name  # bench/

PROMPTS = [
    "Tell me a short fact about the ocean.",
    "What is 13 times 7?",
    "Name three colours.",
    "Write one sentence about cats.",
    "What is machine learning?",
    "Give me a word that rhymes with light.",
]
MODELS = ["base", "math_specialist", "pirate_style", "math_half", "pirate_half"]


def ask(url: str, model: str, prompt: str, tokens: int, *, stream: bool, disconnect_after: int | None = None):
    """``(status, text, finish_reason)`` of one greedy chat request; ``disconnect_after`` chunks: hang up."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": stream}
    if not stream:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        if r.status_code != 200:
            return r.status_code, r.text, None
        choice = r.json()["choices"][0]
        return 200, choice["message"]["content"], choice["finish_reason"]
    text, finish, chunks = [], None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.text, None
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            if disconnect_after is not None and chunks > disconnect_after:
                return None, "".join(text), "disconnected"
            msg = json.loads(line[6:])
            for choice in msg.get("choices") or []:
                text.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
    return 200, "".join(text), finish


def sample(pid: int) -> tuple[float, int]:
    """RSS in MiB and the number of open file descriptors of process ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llamacpp", choices=("llamacpp", "transformers"))
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=float, default=30, help="seconds between RSS/fd samples")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for adaptrix serve")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ads = adapters_folder(Path(tempfile.mkdtemp(prefix="adaptrix-soak-")))
    cmd = [sys.executable, "-m", "adaptrix", "serve", "--backend", args.backend, "--threads", str(args.threads),
           "--adapters-dir", str(ads), "--max-batch", "8", *args.serve_arg]
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"backend {args.backend}, {args.clients} clients, {args.seconds:.0f} s, {args.tokens} tokens; "
          f"serve args: {' '.join(args.serve_arg) or '-'}", flush=True)
    with server_process(cmd, "/health", "adaptrix serve") as url:
        import httpx

        pid = httpx.get(url + "/health").json().get("pid")
        if pid is None:  # the server is the only adaptrix serve child of this process
            import subprocess

            pid = int(subprocess.check_output(["pgrep", "-n", "-f", "adaptrix serve"]).split()[0])
        alone: dict[tuple[str, str], str] = {}
        for model in MODELS:
            for prompt in PROMPTS:
                status, text, _ = ask(url, model, prompt, args.tokens, stream=False)
                if status != 200:
                    raise SystemExit(f"the alone answer for {model}/{prompt!r} failed: {status} {text}")
                alone[(model, prompt)] = text
        print(f"{len(alone)} answers taken alone; soaking", flush=True)

        lock = threading.Lock()
        counts: collections.Counter = collections.Counter()
        differ: list[tuple] = []
        stop_at = time.monotonic() + args.seconds

        def client(n: int) -> None:
            rng = random.Random(args.seed * 1000 + n)
            while time.monotonic() < stop_at:
                model, prompt = rng.choice(MODELS), rng.choice(PROMPTS)
                stream = rng.random() < 0.5
                hang = rng.random() < 0.1
                try:
                    status, text, finish = ask(url, model, prompt, args.tokens, stream=stream or hang,
                                               disconnect_after=rng.randint(0, 3) if hang else None)
                except httpx.HTTPError as exc:
                    with lock:
                        counts[f"client error {type(exc).__name__}"] += 1
                    continue
                with lock:
                    if finish == "disconnected":
                        counts["disconnects"] += 1
                    elif status != 200:
                        counts[f"HTTP {status}"] += 1
                    else:
                        counts["compared"] += 1
                        counts["streamed" if stream else "plain"] += 1
                        if text != alone[(model, prompt)]:
                            differ.append((model, prompt, "stream" if stream else "plain", alone[(model, prompt)], text))

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            rss, fds = sample(pid)
            samples.append((time.monotonic() - start, rss, fds))
            with lock:
                done = counts["compared"] + counts["disconnects"]
            print(f"  t={samples[-1][0]:6.0f} s  requests {done:5d}  RSS {rss:7.1f} MiB  fds {fds}", flush=True)
            for t in threads:
                t.join(timeout=args.every / len(threads))
        rss, fds = sample(pid)
        time.sleep(2)  # let cancelled rows drain
        rss, fds = sample(pid)
        samples.append((time.monotonic() - start, rss, fds))
        print(f"  end        RSS {rss:7.1f} MiB  fds {fds}")

    print(f"answers compared: {counts['compared']} ({counts['plain']} plain, {counts['streamed']} streamed); "
          f"differ from alone: {len(differ)}; disconnects: {counts['disconnects']}")
    others = {k: v for k, v in counts.items() if k not in ("compared", "plain", "streamed", "disconnects")}
    print(f"errors: {others or 'none'}")
    first = samples[1] if len(samples) > 1 else samples[0]
    print(f"RSS {first[1]:.1f} -> {samples[-1][1]:.1f} MiB, fds {first[2]} -> {samples[-1][2]} "
          f"(from the first sample under load to the end)")
    for model, prompt, how, want, got in differ[:10]:
        print(f"  DIFFER {model} {how} {prompt!r}:\n    alone: {want!r}\n    under load: {got!r}")
    return 1 if differ or any(k.startswith("HTTP 5") for k in others) else 0


if __name__ == "__main__":
    raise SystemExit(main())
