"""What batch invariance costs: the step decoder with rows grouped (the default) beside rows decoded apart.

``Engine.step_decoder(batch_invariant=True)`` computes every row exactly as the
request alone (llama.cpp: one ``llama_decode`` per row; transformers: one
forward per row through the path ``generate`` takes), so each greedy answer
equals ``generate``'s whatever decodes beside it. The default groups the rows
(llama.cpp: one ``llama_decode`` per adapter; transformers: one forward for
the whole batch). This prints, for N rows of one adapter (and N rows of mixed
adapters), decode tokens/s of both modes in the same run, rounds interleaved
and who goes first alternating, with their ratio, and how many rows' greedy
answers differ from the request alone in each mode. Timing alternates the two
modes step by step on one decoder (llama.cpp; transformers: run by run, who
goes first alternating), so noise on a shared machine hits both.

It also prints what padding a lone decode to two tokens would cost a single
stream (the other way to make a one-row batch take the kernels of a batch of
several: ``t(2-row step) / t(1-row step)``).

    python bench/bench_batch_invariance.py [--backend llamacpp|transformers] [--rows 2,4,8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Tell me a short fact about the ocean.",
    "What is 13 times 7?",
    "Write a poem about the moon.",
    "Name three colors and say why you like them.",
    "Explain what a cloud is to a child.",
    "What is 25 times 8?",
    "Describe a sunset over the sea.",
    "Give me a tip for learning to cook.",
]
ADAPTERS = ("math_specialist", "pirate_style")


def decode(engine, rows: list[tuple[str, str | None]], tokens: int, invariant: bool | None) -> tuple[dict, dict]:
    """Add every row, then step until all finish. Returns ({mode: [(wall, CPU) seconds per step]}, key -> ids).

    ``invariant=None`` alternates the modes step by step on one decoder (llama.cpp's decoder reads
    ``batch_invariant`` at each step), so machine noise hits both alike. Only steps where every row ran
    and none finished are timed."""
    d = engine.step_decoder(max_rows=len(rows), batch_invariant=bool(invariant))
    done: dict = {}
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for i, (prompt, adapter) in enumerate(rows):
            prepared = engine.prepare_request(prompt, adapter=adapter, temperature=0, max_new_tokens=tokens)
            d.add(i, prepared, adapter)
        step = 0
        while d.rows:
            mode = bool(invariant) if invariant is not None else bool(step % 2)
            d.batch_invariant = mode
            t0, c0 = time.perf_counter(), time.process_time()
            d.step()
            if len(d.rows) == len(rows) and not any(r.finish_reason for r in d.rows):
                times[mode].append((time.perf_counter() - t0, time.process_time() - c0))
            step += 1
            for row in [r for r in d.rows if r.finish_reason]:
                d.remove(row)
                done[row.key] = tuple(row.generated)
    finally:
        for row in list(d.rows):
            d.remove(row)
    return times, done


def padding_cost(engine, steps: int) -> tuple[float, float]:
    """Median seconds of a one-token decode and of the same decode padded with a dummy token on a scratch
    sequence (no logits), alternating step by step on the runtime, with math_specialist active."""
    runtime = engine.runner.runtime
    runtime.set_max_sequences(max(runtime.n_seq_max, 3))
    runtime.set_loras(engine.adapters.lora_scales((ADAPTERS[0],)))
    ids = engine.tokenizer.encode(PROMPTS[0])
    runtime.forget_sequence(1)
    runtime.decode_sequences(ids, range(len(ids)), [1] * len(ids), [True] * len(ids))
    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(2 * steps):
        padded, pos = bool(step % 2), len(ids) + step
        t0 = time.perf_counter()
        if padded:
            runtime.decode_sequences([ids[-1], ids[0]], [pos, 0], [1, 2], [True, False])
        else:
            runtime.decode_sequences([ids[-1]], [pos], [1], [True])
        times[padded].append(time.perf_counter() - t0)
        runtime.forget_sequence(2)
    runtime.forget_sequence(1)
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llamacpp", choices=("llamacpp", "transformers"))
    ap.add_argument("--rows", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from adaptrix import Engine

    engine = Engine(backend=args.backend, adapters_dir=str(ROOT / "examples" / "adapters"), threads=args.threads,
                    progress=False)
    engine.initialize()
    for name in ADAPTERS:
        engine.load_adapter(name, activate=False)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"backend {args.backend} ({engine.get_model_info().get('dtype')}), {args.threads} threads; "
          f"{args.tokens} new tokens greedy per row; {args.rounds} timed runs per row count, the two modes "
          "interleaved")
    alone_cache: dict = {}

    def alone(prompt, adapter):
        key = (prompt, adapter)
        if key not in alone_cache:
            alone_cache[key] = engine.generate_detailed(prompt, adapter=adapter, temperature=0,
                                                        max_new_tokens=args.tokens).token_ids
        return alone_cache[key]

    cases = []
    for n in args.rows:
        cases.append((f"{n} rows, {ADAPTERS[0]}", [(PROMPTS[i % len(PROMPTS)], ADAPTERS[0]) for i in range(n)]))
    n = max(args.rows)
    cases.append((f"{n} rows, 2 adapters + base", [(PROMPTS[i % len(PROMPTS)], (ADAPTERS + (None,))[i % 3])
                                                  for i in range(n)]))
    cases.insert(0, (f"1 row, {ADAPTERS[0]}", [(PROMPTS[0], ADAPTERS[0])]))
    decode(engine, cases[0][1], 4, False)  # warm: graphs built, adapters converted
    print()
    print(f"{'':32}{'ms/step, grouped':>17}{'apart':>7}{'CPU ms/step':>13}{'apart':>7}{'tok/s, grouped':>16}"
          f"{'apart':>7}{'apart/grouped':>15}{'rows != alone':>15}")
    steps = {}
    for label, rows in cases:
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        differ = {}
        for invariant in (False, True):  # answers, each mode on its own
            _, done = decode(engine, rows, args.tokens, invariant)
            differ[invariant] = sum(done[i] != alone(*rows[i]) for i in range(len(rows)))
        for r in range(args.rounds):
            if args.backend == "llamacpp":  # timing: modes alternate step by step on one decoder
                got, _ = decode(engine, rows, args.tokens, None)
            else:  # a transformers row keeps a batch-invariant decoder's own cache: runs alternate instead
                got = {}
                for mode in ((False, True) if r % 2 == 0 else (True, False)):
                    got[mode] = decode(engine, rows, args.tokens, mode)[0][mode]
            for mode in (False, True):
                times[mode] += got[mode]
        g, a = (statistics.median(t for t, _ in times[m]) for m in (False, True))
        cg, ca = (statistics.median(c for _, c in times[m]) for m in (False, True))
        steps[label] = g
        n = len(rows)
        print(f"{label:32}{g * 1e3:17.1f}{a * 1e3:7.1f}{cg * 1e3:13.1f}{ca * 1e3:7.1f}{n / g:16.1f}{n / a:7.1f}"
              f"{g / a:15.2f}{f'{differ[False]} / {differ[True]} of {n}':>15}")
    if args.backend == "llamacpp":
        one, two = padding_cost(engine, args.rounds * 32)
        print(f"\npadding every one-token decode with a dummy token on another sequence (so that a row alone takes "
              f"the kernels of a batch) makes a single stream's step {two / one:.2f}x as long "
              f"({one * 1e3:.1f} -> {two * 1e3:.1f} ms, medians, alternating step by step)")
    print("(ms/step: wall-clock medians over the steps where every row ran; CPU ms/step: this process's CPU time "
          "over all its threads, steadier on a busy machine; apart/grouped: the wall-clock tokens/s ratio; rows != "
          "alone: grouped / apart, and 'apart' must always be 0)")
    engine.cleanup()


if __name__ == "__main__":
    main()
