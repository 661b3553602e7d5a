"""The two backends side by side on the embedded SmolLM2-135M-Instruct (issue 9's performance targets).

One run, 2 threads (``torch.set_num_threads`` and llama.cpp ``n_threads``),
greedy, 128 new tokens, the same chat prompt everywhere. Every figure is
printed beside its baseline and the target, with the machine and its load.

1. Decode tokens/s, ``(new tokens - 1) / (last token - first token)`` from
   ``Engine.stream``, and tokens/s over the wall time of ``generate_detailed``:
   the llama.cpp backend; raw llama-cpp-python ``Llama`` on the same file,
   prompt ids and threads (its greedy tokens must equal the backend's); the
   transformers backend in float32 and in bfloat16; the llama.cpp backend with
   ``math_specialist`` active, beside raw ``Llama`` with the same converted
   GGUF LoRA; raw transformers ``model.generate`` in float32 and bfloat16
   on the same converted folder (the oracle for what a dtype can give on this
   CPU). Sides run in interleaved rounds whose order reverses every
   round (the CPU is shared): medians are reported, with the best round.
2. ``switch_adapter`` between two loaded adapters: median over many switches,
   beside raw ``llama_set_adapters_lora`` and the transformers backend.
3. ``adaptrix generate -n 16 Hi`` in fresh processes (caches warm): wall to
   the first byte on stdout, wall to the end, peak RSS (``wait4``), per backend.
4. First start with an empty ``ADAPTRIX_CACHE``: ``Engine(...).initialize()``
   in a fresh process per backend, and what the cache holds after each.

    python bench/bench_backends.py [--rounds 3] [--switches 2000] [--fresh 3] [--json bench/results_backends.json]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Write a short story about a robot who learns to paint."
ADAPTERS_DIR = ROOT / "examples" / "adapters"
#: Issue 9's measurements before the llama.cpp backend (same machine, 2 threads, one run).
ISSUE = {"tf_fp32_tps": 17.4, "tf_bf16_tps": 28.2, "raw_tps": 102.3, "tf_rss_mb": 954, "raw_rss_mb": 209,
         "tf_generate_s": 6.7, "raw_switch_ms": 0.026, "first_start_convert_s": 20.0}


# ---------------------------------------------------------------------------- machine
def machine() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------- timed sides
def timed_stream(engine, **options) -> dict:
    """One ``engine.stream``: seconds to the first piece, decode rate over the rest, CPU ms per decoded token."""
    t0 = time.perf_counter()
    first = last = c_first = None
    pieces = []
    for piece in engine.stream(PROMPT, **options):
        last = time.perf_counter()
        if first is None:
            first, c_first = last, time.process_time()
        pieces.append(piece)
    c_last = time.process_time()
    return {"first_s": first - t0, "span_s": last - first, "cpu_s": c_last - c_first, "text": "".join(pieces)}


def timed_generate(engine, **options) -> dict:
    t0 = time.perf_counter()
    result = engine.generate_detailed(PROMPT, **options)
    return {"wall_s": time.perf_counter() - t0, "tokens": len(result.token_ids), "text": result.text}


def timed_raw(raw, ids: list[int], n: int, eog) -> dict:
    """Raw ``Llama.generate`` greedy, ``n`` tokens at most, stopping after an end-of-generation token."""
    raw.reset()
    t0 = time.perf_counter()
    out, first, c_first = [], None, None
    for token in raw.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if first is None:
            first, c_first = time.perf_counter(), time.process_time()
        if eog(token) or len(out) >= n:
            break
    end, c_end = time.perf_counter(), time.process_time()
    return {"first_s": first - t0, "span_s": end - first, "cpu_s": c_end - c_first, "wall_s": end - t0,
            "tokens": len(out), "ids": out}


class Side:
    """One thing measured each round: its rounds' decode and wall rates."""

    def __init__(self, name: str, run):
        self.name, self.run, self.rounds = name, run, []

    def summary(self) -> dict:
        dec = [r["decode_tps"] for r in self.rounds]
        wall = [r["wall_tps"] for r in self.rounds]
        return {
            "tokens": self.rounds[-1]["tokens"],
            "decode_tps": statistics.median(dec), "decode_tps_best": max(dec),
            "decode_tps_rounds": [round(x, 1) for x in dec],
            "wall_tps": statistics.median(wall),
            "first_token_ms": statistics.median(r["first_s"] for r in self.rounds) * 1e3,
            "cpu_ms_per_token": statistics.median(r["cpu_ms"] for r in self.rounds),
        }


def decode_section(args, out: dict) -> None:
    import llama_cpp
    import torch

    from adaptrix import Engine
    from adaptrix.models.default_model import default_model_path
    from adaptrix_llamacpp.lora_cache import cached_lora
    from support.llamacpp import raw_llama

    torch.set_num_threads(args.threads)
    n = args.tokens
    greedy = dict(temperature=0, repetition_penalty=1.0, max_new_tokens=n)
    path = default_model_path()

    ll = Engine(backend="llamacpp", adapters_dir=ADAPTERS_DIR, progress=False)
    ll.initialize()
    ll.runner.runtime.set_threads(args.threads)
    ll.load_adapter("math_specialist")
    ll.load_adapter("pirate_style")
    ll.switch_adapter(None)
    tf32 = Engine(backend="transformers", dtype="float32", adapters_dir=ADAPTERS_DIR, progress=False)
    tf32.initialize()
    tf16 = Engine(backend="transformers", dtype="bfloat16", progress=False)
    tf16.initialize()

    prepared = ll.prepare_request(PROMPT, **greedy)
    ids = list(prepared.input_ids)
    raw = raw_llama(path, n_ctx=ll.runner.runtime.n_ctx, n_threads=args.threads)
    vocab = llama_cpp.llama_model_get_vocab(raw.model)

    def eog(token):
        return llama_cpp.llama_vocab_is_eog(vocab, token)

    # raw Llama with the very GGUF LoRA file the backend converted math_specialist into
    lora_file = cached_lora(ADAPTERS_DIR / "math_specialist", path, progress=False)
    raw_lora = llama_cpp.llama_adapter_lora_init(raw.model, str(lora_file).encode())
    lora_file_b = cached_lora(ADAPTERS_DIR / "pirate_style", path, progress=False)
    raw_lora_b = llama_cpp.llama_adapter_lora_init(raw.model, str(lora_file_b).encode())

    def raw_set(*adapters):
        ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * max(len(adapters), 1))(*adapters)
        scales = (ctypes.c_float * max(len(adapters), 1))(*([1.0] * len(adapters)))
        if llama_cpp.llama_set_adapters_lora(raw.ctx, ptrs, len(adapters), scales) != 0:
            raise RuntimeError("llama_set_adapters_lora failed")

    # oracle: greedy tokens of the backend equal raw llama-cpp-python's, without and with the adapter
    checks = {}
    for label, adapter, raw_adapters in (("base", None, ()), ("math_specialist", "math_specialist", (raw_lora,))):
        ours = ll.generate_detailed(PROMPT, adapter=adapter, **greedy)
        raw_set(*raw_adapters)
        theirs = timed_raw(raw, ids, n, eog)["ids"]
        mine = [t for t in ours.token_ids if not eog(t)]
        checks[label] = mine == [t for t in theirs if not eog(t)]
        print(f"greedy tokens equal raw Llama ({label}, {len(mine)} tokens): {'yes' if checks[label] else 'NO'}")
    raw_set()
    out["tokens_equal_raw"] = checks

    def engine_side(engine, **extra):
        def run():
            g = timed_generate(engine, **greedy, **extra)
            s = timed_stream(engine, **greedy, **extra)
            if s["text"] != g["text"]:
                raise SystemExit(f"stream and generate differ: {s['text'][:60]!r} vs {g['text'][:60]!r}")
            k = g["tokens"]
            return {"tokens": k, "decode_tps": (k - 1) / s["span_s"], "wall_tps": k / g["wall_s"],
                    "first_s": s["first_s"], "cpu_ms": s["cpu_s"] / (k - 1) * 1e3}
        return run

    def raw_side(*adapters):
        def run():
            raw_set(*adapters)
            r = timed_raw(raw, ids, n, eog)
            raw_set()
            k = r["tokens"]
            return {"tokens": k, "decode_tps": (k - 1) / r["span_s"], "wall_tps": k / r["wall_s"],
                    "first_s": r["first_s"], "cpu_ms": r["cpu_s"] / (k - 1) * 1e3}
        return run

    from transformers import AutoModelForCausalLM

    folder = tf32.runner.source.path  # the GGUF converted once (the transformers backend's own cache)
    raw_tf = {dt: AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dt)).eval()
              for dt in ("float32", "bfloat16")}
    tf_ids = torch.tensor([list(tf32.prepare_request(PROMPT, **greedy).input_ids)])

    def raw_tf_side(model):
        def run():
            from transformers.generation.streamers import BaseStreamer

            times = []

            class Clock(BaseStreamer):  # the time of each new token (the first put() is the prompt)
                def put(self, value):
                    times.append(time.perf_counter())

                def end(self):
                    pass

            t0, c0 = time.perf_counter(), None
            with torch.inference_mode():
                out = model.generate(tf_ids, attention_mask=torch.ones_like(tf_ids), max_new_tokens=n,
                                     do_sample=False, streamer=Clock())
            end = time.perf_counter()
            k = out.shape[1] - tf_ids.shape[1]
            first, last = times[1], times[-1]
            return {"tokens": k, "decode_tps": (k - 1) / (last - first), "wall_tps": k / (end - t0),
                    "first_s": first - t0, "cpu_ms": float("nan")}
        return run

    sides = [
        Side("llamacpp", engine_side(ll, adapter=None)),
        Side("raw_llama", raw_side()),
        Side("llamacpp_math", engine_side(ll, adapter="math_specialist")),
        Side("raw_llama_math", raw_side(raw_lora)),
        Side("tf_float32", engine_side(tf32)),
        Side("tf_bfloat16", engine_side(tf16)),
        Side("raw_tf_float32", raw_tf_side(raw_tf["float32"])),
        Side("raw_tf_bfloat16", raw_tf_side(raw_tf["bfloat16"])),
    ]
    for engine in (tf32, tf16):  # warm-up: torch's first call (the llama.cpp sides ran in the oracle check)
        engine.generate_detailed(PROMPT, **dict(greedy, max_new_tokens=4))
    for model in raw_tf.values():
        with torch.inference_mode():
            model.generate(tf_ids, attention_mask=torch.ones_like(tf_ids), max_new_tokens=4, do_sample=False)
    for i in range(args.rounds):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            side.rounds.append(side.run())
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{s.name} {s.rounds[-1]['decode_tps']:.1f}" for s in sides)
              + f" tok/s (load {os.getloadavg()[0]:.1f})", flush=True)
    out["decode"] = {s.name: s.summary() for s in sides}

    # switching between two loaded adapters
    def switch_times(fn, names) -> float:
        times = []
        for i in range(args.switches):
            t0 = time.perf_counter_ns()
            fn(names[i % 2])
            times.append(time.perf_counter_ns() - t0)
        return statistics.median(times) / 1e6

    tf32.load_adapter("math_specialist")
    tf32.load_adapter("pirate_style")
    out["switch_ms"] = {
        "llamacpp": switch_times(ll.switch_adapter, ("math_specialist", "pirate_style")),
        "raw_llama": switch_times(lambda a: raw_set(a), (raw_lora, raw_lora_b)),
        "tf_float32": switch_times(tf32.switch_adapter, ("math_specialist", "pirate_style")),
        "switches": args.switches,
    }
    raw_set()
    raw.close()
    for e in (ll, tf32, tf16):
        e.cleanup()


# ---------------------------------------------------------------------------- fresh processes
def fresh_generate(backend: str, dtype: str) -> dict:
    """``python -m adaptrix generate -n 16 Hi`` in a fresh process: first stdout byte, end, peak RSS."""
    cmd = [sys.executable, "-m", "adaptrix", "generate", "-n", "16", "--temperature", "0", "--backend", backend,
           "--dtype", dtype, "Hi"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    first_byte = os.read(proc.stdout.fileno(), 1)
    t_first = time.perf_counter()
    rest = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    t_end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode or not first_byte:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return {"first_s": t_first - t0, "end_s": t_end - t0, "peak_rss_mb": usage.ru_maxrss / 1024,
            "text": (first_byte + rest).decode(errors="replace").strip()}


FIRST_START = """
import json, sys, time
t = time.perf_counter()
from adaptrix import Engine
e = Engine(backend=sys.argv[1], dtype=sys.argv[2], progress=False)
e.initialize()
print(json.dumps({"seconds": time.perf_counter() - t, "backend": e.get_model_info()["backend"]}))
"""


def first_start(backend: str, dtype: str, cache: Path) -> dict:
    env = dict(os.environ, ADAPTRIX_CACHE=str(cache))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FIRST_START, backend, dtype], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"first start on {backend} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    files = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    return {"init_s": result["seconds"], "process_s": wall, "cache_entries": files,
            "converted": any(f.split("/")[0] == "gguf" and f != "gguf" for f in files)}


def process_section(args, out: dict) -> None:
    runs = {"llamacpp": [], "transformers": []}
    for i in range(args.fresh):
        pair = [("llamacpp", "auto"), ("transformers", "float32")]
        for backend, dtype in pair if i % 2 == 0 else pair[::-1]:
            runs[backend].append(fresh_generate(backend, dtype))
    out["fresh_generate"] = {
        b: {"first_s": statistics.median(r["first_s"] for r in rs), "end_s": statistics.median(r["end_s"] for r in rs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs), "runs": len(rs), "text": rs[0]["text"]}
        for b, rs in runs.items()
    }
    with tempfile.TemporaryDirectory(prefix="adaptrix-first-start-") as tmp:
        cache = Path(tmp)
        out["first_start"] = {"llamacpp": first_start("llamacpp", "auto", cache)}
        out["first_start"]["transformers"] = first_start("transformers", "float32", cache)


# ---------------------------------------------------------------------------- report
def row(label: str, value: float, unit: str, baseline: str, target: str, met: bool | None) -> str:
    verdict = "" if met is None else ("met" if met else "MISSED")
    return f"{label:44}{value:10.{3 if value < 0.1 else (2 if value < 10 else 1)}f} {unit:6}{baseline:44}{target:18}{verdict}"


def report(out: dict) -> None:
    d, m = out["decode"], out["machine"]
    print()
    print(f"machine: {m['cpu']}, {m['cores']} cores, bf16: {', '.join(m['bf16_flags']) or 'no'}; "
          f"load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end; {m['date']}")
    print(f"embedded SmolLM2-135M-Instruct Q4_1; {out['threads']} threads; greedy; {out['tokens']} new tokens; "
          f"{out['rounds']} interleaved rounds (order reversed each round), medians")
    print()
    print(f"{'measure':44}{'value':>10} {'':6}{'baseline':44}{'target':18}")
    ll, raw, tf32, tf16 = d["llamacpp"], d["raw_llama"], d["tf_float32"], d["tf_bfloat16"]
    llm, rawm = d["llamacpp_math"], d["raw_llama_math"]
    rows = out["verdicts"] = {}

    def add(key, label, value, unit, baseline, target, met):
        rows[key] = {"value": round(value, 4), "target": target, "met": met}
        print(row(label, value, unit, baseline, target, met))

    add("decode_llamacpp", "decode, llama.cpp backend", ll["decode_tps"], "tok/s",
        f"raw Llama {raw['decode_tps']:.1f} (issue: {ISSUE['raw_tps']})", "", None)
    add("decode_vs_raw", "  ratio to raw llama-cpp-python", ll["decode_tps"] / raw["decode_tps"], "x",
        f"best rounds {ll['decode_tps_best'] / raw['decode_tps_best']:.2f}x", ">= 0.95x",
        ll["decode_tps"] / raw["decode_tps"] >= 0.95)
    add("wall_vs_raw", "  per generate (wall incl. prompt) vs raw", ll["wall_tps"] / raw["wall_tps"], "x",
        f"{ll['wall_tps']:.1f} vs {raw['wall_tps']:.1f} tok/s", "", None)
    add("decode_vs_tf32", "  ratio to transformers float32", ll["decode_tps"] / tf32["decode_tps"], "x",
        f"transformers f32 {tf32['decode_tps']:.1f} today", ">= 5x",
        ll["decode_tps"] / tf32["decode_tps"] >= 5)
    add("decode_vs_issue_tf32", "  ratio to the issue's transformers f32", ll["decode_tps"] / ISSUE["tf_fp32_tps"],
        "x", f"adaptrix before the backends: {ISSUE['tf_fp32_tps']} tok/s", ">= 5x",
        ll["decode_tps"] / ISSUE["tf_fp32_tps"] >= 5)
    add("decode_math", "decode, llama.cpp + math_specialist", llm["decode_tps"], "tok/s",
        f"raw Llama + same LoRA {rawm['decode_tps']:.1f}", "", None)
    add("math_vs_base", "  ratio to the base model's decode", llm["decode_tps"] / ll["decode_tps"], "x",
        f"raw Llama: {rawm['decode_tps'] / raw['decode_tps']:.2f}x", ">= 0.85x",
        llm["decode_tps"] / ll["decode_tps"] >= 0.85)
    s = out["switch_ms"]
    add("switch", "switch_adapter, llama.cpp (median)", s["llamacpp"], "ms",
        f"raw set_adapters {s['raw_llama']:.4f}; transformers {s['tf_float32']:.3f}", "<= 0.1 ms",
        s["llamacpp"] <= 0.1)
    add("decode_bf16", "decode, transformers bfloat16", tf16["decode_tps"], "tok/s",
        f"float32 {tf32['decode_tps']:.1f} (issue: {ISSUE['tf_bf16_tps']} vs {ISSUE['tf_fp32_tps']})", "", None)
    rtf32, rtf16 = d["raw_tf_float32"], d["raw_tf_bfloat16"]
    add("bf16_vs_fp32", "  ratio bfloat16 / float32", tf16["decode_tps"] / tf32["decode_tps"], "x",
        f"raw model.generate: {rtf16['decode_tps'] / rtf32['decode_tps']:.2f}x", ">= 1.5x",
        tf16["decode_tps"] / tf32["decode_tps"] >= 1.5)
    add("tf32_vs_raw", "transformers f32 backend vs raw model.generate", tf32["decode_tps"] / rtf32["decode_tps"],
        "x", f"raw {rtf32['decode_tps']:.1f} tok/s; llama.cpp / raw f32: {raw['decode_tps'] / rtf32['decode_tps']:.2f}x",
        "", None)
    if "fresh_generate" in out:
        fl, ft = out["fresh_generate"]["llamacpp"], out["fresh_generate"]["transformers"]
        add("fresh_first", "adaptrix generate, first token (llama.cpp)", fl["first_s"], "s",
            f"transformers {ft['first_s']:.2f} s (issue: {ISSUE['tf_generate_s']} to end)", "<= 1.5 s",
            fl["first_s"] <= 1.5)
        add("fresh_end", "  to the end of 16 tokens", fl["end_s"], "s", f"transformers {ft['end_s']:.2f} s", "", None)
        add("fresh_rss", "  peak RSS", fl["peak_rss_mb"], "MB",
            f"transformers {ft['peak_rss_mb']:.0f} (issue: {ISSUE['tf_rss_mb']})", "<= 300 MB",
            fl["peak_rss_mb"] <= 300)
        sl, st = out["first_start"]["llamacpp"], out["first_start"]["transformers"]
        add("first_start", "first start, empty cache, llama.cpp init", sl["init_s"], "s",
            f"transformers {st['init_s']:.1f} s (converts: {'yes' if st['converted'] else 'no'})",
            "converts nothing", not sl["converted"])
        print(f"  cache after the llama.cpp start: {sl['cache_entries'] or 'empty'}; "
              f"after transformers: {len(st['cache_entries'])} entries")
    print()
    print("per side (median of rounds): decode tok/s [rounds], wall tok/s, first token ms, CPU ms per token, tokens")
    for name, x in d.items():
        print(f"  {name:16}{x['decode_tps']:8.1f} {x['decode_tps_rounds']}  {x['wall_tps']:7.1f} "
              f"{x['first_token_ms']:8.1f} {x['cpu_ms_per_token']:7.2f} {x['tokens']:5}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--switches", type=int, default=2000)
    ap.add_argument("--fresh", type=int, default=3, help="fresh-process generate runs per backend")
    ap.add_argument("--skip-processes", action="store_true", help="skip the fresh-process and first-start parts")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    start = time.perf_counter()
    out = {"machine": machine(), "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds,
           "prompt": PROMPT}
    print(f"load average at start: {out['machine']['load_average_start']}", flush=True)
    if not args.skip_processes:
        process_section(args, out)  # first, before this process holds 1.5 GB of models
        print(f"fresh processes done ({time.perf_counter() - start:.0f} s)", flush=True)
    decode_section(args, out)
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out["seconds"] = round(time.perf_counter() - start, 1)
    report(out)
    print(f"\nwhole run: {out['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
