"""Adapter benchmarks: adaptrix's PeftAdapterManager side by side with raw peft, in one run.

Model: a random Qwen3-shaped model (hidden 512, 8 layers, vocab 32000, tied
embeddings; about 35M parameters) built in a temp dir. Adapters: LoRA r=16 on
all seven projections, random non-zero weights.

    python bench/bench_adapters.py [--quick] [--threads N]

Variants that are compared run interleaved (round-robin, so load drift hits all
alike) and each reports its median. Prints the results as JSON and writes them
to --out (default: bench/results_adapters.json), with the date and the 1-minute
load average at start and end: rerun when the machine was busy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(tmp: Path, n_adapters: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(
        vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(tmp / "model")
    params = sum(p.numel() for p in model.parameters())
    adapters = []
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))
    for i in range(n_adapters):
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        out = tmp / "adapters" / f"a{i:02d}"
        if i < 4:
            pm.save_pretrained(out)
        else:  # load time does not depend on the values: copy to save time
            shutil.copytree(tmp / "adapters" / "a03", out)
        adapters.append(out)
    return tmp / "model", adapters, params


def fresh(model_dir):
    """A new model whose weights all live in process memory.

    from_pretrained leaves weights memory-mapped from the file, while merging an adapter rewrites the targeted
    weights into ordinary memory; decode here ran up to ~4% faster on the latter, which made a merged model look
    faster than its own base. Cloning puts every variant on the same footing.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for p in model.parameters():  # tied weights are one Parameter: they stay tied
            p.data = p.data.clone()
    return model


from adaptrix.types import UNSET  # noqa: E402


def manager_for(model_dir, adapters_dir, **kw):
    from adaptrix.adapters.peft_manager import PeftAdapterManager
    from adaptrix.types import LoadedModel

    model = fresh(model_dir)
    return PeftAdapterManager(LoadedModel(model=model, tokenizer=None, family="qwen", model_id=str(model_dir)),
                          adapters_dir, **kw)


def median_time(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_switch(model_dir, adapters, n):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(fresh(model_dir), str(adapters[0]), adapter_name="a").eval()
    pm.load_adapter(str(adapters[1]), adapter_name="b")
    flip = iter(int(i % 2) for i in range(10**9))
    peft_s = median_time(lambda: pm.set_adapter("ab"[next(flip)]), n)
    m = manager_for(model_dir, adapters[0].parent)
    m.load(str(adapters[0]), name="a")
    m.load(str(adapters[1]), name="b")
    ours = median_time(lambda: m.switch("ab"[next(flip)]), n)
    return {"peft_set_adapter_ms": peft_s * 1e3, "adaptrix_switch_ms": ours * 1e3}


def interleaved(variants: dict, reps: int) -> dict:
    """Run each variant once per round (round-robin, so load drift hits all alike); each one's median time."""
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm up
    for _ in range(reps):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def generator(model, ids, new_tokens, **kw):
    import torch

    def run():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, **kw)

    return run


def bench_decode(model_dir, adapters, new_tokens, reps):
    """Batch 1, greedy, one adapter active; every variant calls generate with the same kwargs."""
    import torch
    from peft import PeftModel

    ids = torch.randint(5, 32000, (1, 16), generator=torch.Generator().manual_seed(0))
    base = fresh(model_dir)
    pm = PeftModel.from_pretrained(fresh(model_dir), str(adapters[0])).eval()
    merged_m = manager_for(model_dir, adapters[0].parent, merge=True)
    merged_m.load(str(adapters[0]), name="a")
    plain_m = manager_for(model_dir, adapters[0].parent)
    plain_m.load(str(adapters[0]), name="a")

    def engine_path(m):
        def run():
            with m.scope(UNSET):  # what the engine does around generate: merge mode merges here
                generator(m.generation_model(), ids, new_tokens)()
        return run

    med = interleaved({"base": generator(base, ids, new_tokens), "peft": generator(pm, ids, new_tokens),
                       "merged": engine_path(merged_m), "unmerged": engine_path(plain_m)}, reps)
    tps = lambda s: new_tokens / s  # noqa: E731
    return {
        "base_tok_s": tps(med["base"]),
        "peft_unmerged_tok_s": tps(med["peft"]),
        "adaptrix_unmerged_tok_s": tps(med["unmerged"]),
        "adaptrix_merged_tok_s": tps(med["merged"]),
        "peft_unmerged_over_base": med["base"] / med["peft"],
        "adaptrix_unmerged_over_base": med["base"] / med["unmerged"],
        "adaptrix_merged_over_base": med["base"] / med["merged"],
    }


def bench_mixed(model_dir, adapters, new_tokens, reps):
    import torch
    from peft import PeftModel

    ids = torch.randint(5, 32000, (8, 16), generator=torch.Generator().manual_seed(1))
    names = [f"a{i % 4}" for i in range(8)]
    m = manager_for(model_dir, adapters[0].parent)
    for i in range(4):
        m.load(str(adapters[i]), name=f"a{i}", activate=False)
    model = m.generation_model()

    def batched():
        generator(model, ids, new_tokens, **m.batch_kwargs(names, 8))()

    def one_by_one():
        for i, n in enumerate(names):
            with m.scope(n):
                generator(model, ids[i:i + 1], new_tokens)()

    pm = PeftModel.from_pretrained(fresh(model_dir), str(adapters[0]), adapter_name="a0").eval()
    for i in range(1, 4):
        pm.load_adapter(str(adapters[i]), adapter_name=f"a{i}")

    def peft_one_by_one():
        for i, n in enumerate(names):
            pm.set_adapter(n)
            generator(pm, ids[i:i + 1], new_tokens)()

    base = fresh(model_dir)

    def base_one_by_one():
        for i in range(len(names)):
            generator(base, ids[i:i + 1], new_tokens)()

    med = interleaved({"ours": batched, "ours_seq": one_by_one,
                       "peft": generator(pm, ids, new_tokens, adapter_names=names), "peft_seq": peft_one_by_one,
                       "base": generator(base, ids, new_tokens), "base_seq": base_one_by_one},
                      reps)
    return {
        "adaptrix_batched_s": med["ours"], "adaptrix_one_by_one_s": med["ours_seq"],
        "adaptrix_speedup": med["ours_seq"] / med["ours"],
        "peft_batched_s": med["peft"], "peft_one_by_one_s": med["peft_seq"],
        "peft_speedup": med["peft_seq"] / med["peft"],
        "base_batched_s": med["base"], "base_one_by_one_s": med["base_seq"],
        "base_speedup_no_adapters": med["base_seq"] / med["base"],
    }


def bench_load(model_dir, adapters, checkpoints, repeats=3):
    """Time loading one more adapter with N already loaded; at the checkpoints, the median of a few
    load + unload cycles (the unload is not timed) for both."""
    from peft import PeftModel

    out = {}
    pm = PeftModel.from_pretrained(fresh(model_dir), str(adapters[0]), adapter_name="a00").eval()
    m = manager_for(model_dir, adapters[0].parent)
    m.load("a00", activate=False)

    def timed(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    for i, path in enumerate(adapters[1:], start=1):
        if i in checkpoints:  # extra cycles with `i` loaded, then the real load below
            peft_ms, ours_ms = [], []
            for _ in range(repeats - 1):
                peft_ms.append(timed(lambda: pm.load_adapter(str(path), adapter_name=path.name)))
                pm.delete_adapter(path.name)
                ours_ms.append(timed(lambda: m.load(path.name, activate=False)))
                m.unload(path.name)
        peft_t = timed(lambda: pm.load_adapter(str(path), adapter_name=path.name))
        ours_t = timed(lambda: m.load(path.name, activate=False))
        if i in checkpoints:
            out[f"load_with_{i}_loaded"] = {"peft_ms": statistics.median(peft_ms + [peft_t]),
                                            "adaptrix_ms": statistics.median(ours_ms + [ours_t])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens and adapters (smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared box)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_adapters.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n_adapters = 12 if args.quick else 51
    new_tokens = 8 if args.quick else 24
    reps = 1 if args.quick else 5
    decode_reps = 1 if args.quick else 9  # short runs (under a second): more rounds for a steady median
    with tempfile.TemporaryDirectory(prefix="adaptrix-bench-") as tmp:
        model_dir, adapters, params = build(Path(tmp), n_adapters)
        def section(fn, *a):
            gc.collect()  # the previous section's models (peft keeps reference cycles) go before this one's load
            return fn(*a)

        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
                       f"{torch.__version__}, threads {torch.get_num_threads()}",
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_average_1min_at_start": os.getloadavg()[0],
            "model_params": params,
            "switch": section(bench_switch, model_dir, adapters, 500),
            "decode": section(bench_decode, model_dir, adapters, new_tokens, decode_reps),
            "mixed_batch": section(bench_mixed, model_dir, adapters, new_tokens, reps),
            "load": section(bench_load, model_dir, adapters, {1, 10, 50} if not args.quick else {1, 10}),
        }
        results["load_average_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
