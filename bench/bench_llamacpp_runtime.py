"""adaptrix's LlamaRuntime beside raw llama-cpp-python on the same GGUF, prompt and threads.

Greedy, 128 new tokens (end-of-generation ignored so both produce exactly
128), the embedded SmolLM2-135M-Instruct Q4_1. Rounds alternate between the
two so machine noise hits both; the median and best rounds are printed
(on a busy shared CPU the best round is the better estimate). Then LoRA: two
random GGUF LoRAs shaped like ``math_specialist`` (rank 8 on q/k/v/o and
gate/up/down of every layer), time to switch the active one, and decode speed
with one active. Last, a four-turn chat: time to each turn's first token with
the runtime's prompt cache (only the new part of the prompt is decoded) and
without it, and whether the replies are the same.

    python bench/bench_llamacpp_runtime.py [--threads 2] [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name as _cpu_name  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n"
LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def timed(tokens_iter, n: int) -> tuple[list[int], float, float, float]:
    """(tokens, seconds to the first token, decode tokens/s over the rest, CPU ms per decoded token).

    CPU time (all threads of this process) is the steadier figure on a busy
    machine: waiting for a core costs wall time, not CPU time.
    """
    t0 = time.perf_counter()
    out, t_first, c_first = [], None, None
    for tok in tokens_iter:
        out.append(tok)
        if t_first is None:
            t_first, c_first = time.perf_counter(), time.process_time()
        if len(out) == n:
            break
    t_end, c_end = time.perf_counter(), time.process_time()
    return out, t_first - t0, (len(out) - 1) / (t_end - t_first), (c_end - c_first) / (len(out) - 1) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=1024)
    args = ap.parse_args()

    from adaptrix.models.default_model import default_model_path
    from adaptrix_llamacpp.runtime import LlamaRuntime
    from support.llamacpp import raw_llama, write_random_lora

    path = default_model_path()
    rt = LlamaRuntime(path, n_ctx=args.n_ctx, n_threads=args.threads)
    raw = raw_llama(path, n_ctx=args.n_ctx, n_threads=args.threads)
    ids = rt.tokenize(PROMPT, add_special=False)
    n = args.tokens
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"model: {path.name}; prompt {len(ids)} tokens; {n} new tokens greedy; {args.threads} threads; "
          f"n_ctx {args.n_ctx}; {args.rounds} rounds, who goes first alternating")

    ours, theirs, first_ours, first_theirs, cpu_ours, cpu_theirs = [], [], [], [], [], []
    for i in range(args.rounds):
        def run_raw():
            raw.reset()
            return timed(raw.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True), n)

        def run_ours():
            rt.forget_prompt()  # a whole prompt, as raw's reset (the prompt cache is measured below)
            return timed(rt.generate_tokens(ids, max_new_tokens=n, stop_ids=()), n)

        if i % 2:  # who goes first alternates
            toks, f, r, c = run_ours()
            toks_raw, f_raw, r_raw, c_raw = run_raw()
        else:
            toks_raw, f_raw, r_raw, c_raw = run_raw()
            toks, f, r, c = run_ours()
        if toks != toks_raw:
            sys.exit(f"token mismatch: runtime {toks[:16]}... vs raw {toks_raw[:16]}...")
        ours.append(r), theirs.append(r_raw), first_ours.append(f), first_theirs.append(f_raw)
        cpu_ours.append(c), cpu_theirs.append(c_raw)
    raw.close()
    m_ours, m_raw = statistics.median(ours), statistics.median(theirs)
    print()
    print(f"{'':32}{'LlamaRuntime':>14}{'raw Llama':>14}{'ratio':>8}")
    print(f"{'decode tok/s (median)':32}{m_ours:14.1f}{m_raw:14.1f}{m_ours / m_raw:8.2f}")
    print(f"{'decode tok/s (best round)':32}{max(ours):14.1f}{max(theirs):14.1f}{max(ours) / max(theirs):8.2f}")
    print(f"{'decode tok/s (each round)':32}{' '.join(f'{x:.0f}' for x in ours):>14}"
          f"{' '.join(f'{x:.0f}' for x in theirs):>14}")
    co, ct = statistics.median(cpu_ours), statistics.median(cpu_theirs)
    print(f"{'CPU ms per decoded token (median)':32}{co:14.2f}{ct:14.2f}{ct / co:8.2f}")
    print(f"{'prompt -> first token, ms':32}{statistics.median(first_ours) * 1e3:14.1f}"
          f"{statistics.median(first_theirs) * 1e3:14.1f}")
    print("greedy tokens identical: yes")

    with tempfile.TemporaryDirectory() as tmp:
        a = rt.load_lora(write_random_lora(Path(tmp) / "a.gguf", path, rank=8, seed=1, targets=LORA_TARGETS))
        b = rt.load_lora(write_random_lora(Path(tmp) / "b.gguf", path, rank=8, seed=2, targets=LORA_TARGETS))
        rt.set_loras({a: 1.0})
        list(rt.generate_tokens(ids, max_new_tokens=2, stop_ids=()))  # first use with adapters builds the graph
        switches = 2000
        t0 = time.perf_counter()
        for i in range(switches):
            rt.set_loras({(a if i % 2 else b): 1.0})
        switch_ms = (time.perf_counter() - t0) / switches * 1e3
        rt.set_loras({a: 1.0})
        with_lora, base = [], []
        for i in range(args.rounds):  # alternate, as above
            for active in ((a,), ()) if i % 2 == 0 else ((), (a,)):
                rt.set_loras({x: 1.0 for x in active})
                (with_lora if active else base).append(
                    timed(rt.generate_tokens(ids, max_new_tokens=n, stop_ids=()), n)
                )
    m_lora, m_base = max(x[2] for x in with_lora), max(x[2] for x in base)
    c_lora, c_base = statistics.median(x[3] for x in with_lora), statistics.median(x[3] for x in base)
    print()
    print("LoRA (random, rank 8, q/k/v/o/gate/up/down x 30 layers; not llconv's converted math_specialist):")
    print(f"{'switch active adapter, ms':32}{switch_ms:14.4f}{'target <= 0.1':>22}")
    print(f"{'':32}{'adapter':>14}{'base':>14}{'ratio':>8}")
    print(f"{'decode tok/s (best round)':32}{m_lora:14.1f}{m_base:14.1f}{m_lora / m_base:8.2f}")
    print(f"{'CPU ms per decoded token':32}{c_lora:14.2f}{c_base:14.2f}{c_base / c_lora:8.2f}")
    chat_section(rt, args)
    rt.close()


def chat_section(rt, args) -> None:
    """A four-turn chat: time to the first token of each turn with the prompt cache, and with it dropped."""
    turns = ["What is machine learning?", "Give me an example.", "How is it different from statistics?",
             "Summarise our talk in one sentence."]
    rt.set_loras([])
    history = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    prompts = []
    for question in turns:  # the conversation itself, built once (greedy, 48 tokens a reply)
        history += f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        ids = rt.tokenize(history, add_special=False)
        prompts.append(ids)
        reply = list(rt.generate_tokens(ids, max_new_tokens=48))
        history += rt.detokenize(reply) + "<|im_end|>\n"
    firsts = {"cached": [[] for _ in turns], "whole": [[] for _ in turns]}
    for r in range(args.rounds):
        for mode in (("cached", "whole") if r % 2 == 0 else ("whole", "cached")):
            rt.forget_prompt()
            for i, ids in enumerate(prompts):
                if mode == "whole":
                    rt.forget_prompt()
                toks, first, _, _ = timed(rt.generate_tokens(ids, max_new_tokens=48), 48)
                firsts[mode][i].append((first, toks, rt.reused_tokens))
    print()
    print(f"chat, {len(turns)} turns (48-token replies): prompt -> first token, ms (median of {args.rounds})")
    print(f"{'turn':6}{'prompt tokens':>15}{'reused':>8}{'cached':>10}{'whole':>10}{'ratio':>8}  same reply")
    for i, ids in enumerate(prompts):
        c = statistics.median(x[0] for x in firsts["cached"][i]) * 1e3
        w = statistics.median(x[0] for x in firsts["whole"][i]) * 1e3
        same = all(x[1] == firsts["whole"][i][0][1] for x in firsts["cached"][i] + firsts["whole"][i])
        print(f"{i + 1:<6}{len(ids):>15}{firsts['cached'][i][0][2]:>8}{c:>10.1f}{w:>10.1f}{w / c:>8.2f}  "
              f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
