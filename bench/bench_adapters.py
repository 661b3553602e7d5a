"""Adapter benchmarks: adaptrix's AdapterManager side by side with raw peft, in one run.

Model: a random Qwen3-shaped model (hidden 512, 8 layers, vocab 32000, tied
embeddings; about 35M parameters) built in a temp dir. Adapters: LoRA r=16 on
all seven projections, random non-zero weights.

    python bench/bench_adapters.py [--quick]

Prints a table and writes JSON to --out (default: bench/results_adapters.json).
"""

from __future__ import annotations

import argparse
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
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


from adaptrix.adapters.engine_api import UNSET  # noqa: E402


def manager_for(model_dir, adapters_dir, **kw):
    from adaptrix.adapters.manager import AdapterManager
    from adaptrix.types import LoadedModel

    model = fresh(model_dir)
    return AdapterManager(LoadedModel(model=model, tokenizer=None, family="qwen", model_id=str(model_dir)),
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
    """Run each variant once per round (round-robin, so load drift hits all alike); keep each one's best time."""
    best = {k: float("inf") for k in variants}
    for fn in variants.values():
        fn()  # warm up
    for _ in range(reps):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def generator(model, ids, new_tokens, **kw):
    import torch

    def run():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, **kw)

    return run


def bench_decode(model_dir, adapters, new_tokens, reps):
    import torch
    from peft import PeftModel

    ids = torch.randint(5, 32000, (1, 16), generator=torch.Generator().manual_seed(0))
    base = fresh(model_dir)
    pm = PeftModel.from_pretrained(fresh(model_dir), str(adapters[0])).eval()
    m = manager_for(model_dir, adapters[0].parent, merge=True)
    m.load(str(adapters[0]), name="a")

    def merged():
        with m.scope(UNSET):  # what the engine does around generate: merge mode merges here
            generator(m.generation_model(), ids, new_tokens)()

    best = interleaved(
        {"base": generator(base, ids, new_tokens), "peft": generator(pm, ids, new_tokens), "merged": merged}, reps
    )
    m.merge_mode = False
    m.unmerge()
    best.update(interleaved({"base2": generator(base, ids, new_tokens),
                             "unmerged": generator(m.generation_model(), ids, new_tokens)}, reps))
    tps = lambda s: new_tokens / s  # noqa: E731
    base_s = min(best["base"], best["base2"])
    return {
        "base_tok_s": tps(base_s),
        "peft_unmerged_tok_s": tps(best["peft"]),
        "adaptrix_unmerged_tok_s": tps(best["unmerged"]),
        "adaptrix_merged_tok_s": tps(best["merged"]),
        "peft_unmerged_over_base": base_s / best["peft"],
        "adaptrix_unmerged_over_base": base_s / best["unmerged"],
        "adaptrix_merged_over_base": base_s / best["merged"],
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

    best = interleaved({"ours": batched, "ours_seq": one_by_one,
                        "peft": generator(pm, ids, new_tokens, adapter_names=names), "peft_seq": peft_one_by_one},
                       reps)
    return {
        "adaptrix_batched_s": best["ours"], "adaptrix_one_by_one_s": best["ours_seq"],
        "adaptrix_speedup": best["ours_seq"] / best["ours"],
        "peft_batched_s": best["peft"], "peft_one_by_one_s": best["peft_seq"],
        "peft_speedup": best["peft_seq"] / best["peft"],
    }


def bench_load(model_dir, adapters, checkpoints):
    from peft import PeftModel

    out = {}
    pm = PeftModel.from_pretrained(fresh(model_dir), str(adapters[0]), adapter_name="a00").eval()
    m = manager_for(model_dir, adapters[0].parent)
    m.load("a00", activate=False)
    for i, path in enumerate(adapters[1:], start=1):
        t = time.perf_counter()
        pm.load_adapter(str(path), adapter_name=path.name)
        peft_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        m.load(path.name, activate=False)
        ours_ms = (time.perf_counter() - t) * 1e3
        if i in checkpoints:
            out[f"load_with_{i}_loaded"] = {"peft_ms": peft_ms, "adaptrix_ms": ours_ms}
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
    reps = 1 if args.quick else 4
    with tempfile.TemporaryDirectory(prefix="adaptrix-bench-") as tmp:
        model_dir, adapters, params = build(Path(tmp), n_adapters)
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
                       f"{torch.__version__}, threads {torch.get_num_threads()}",
            "model_params": params,
            "switch": bench_switch(model_dir, adapters, 500),
            "decode": bench_decode(model_dir, adapters, new_tokens, reps),
            "mixed_batch": bench_mixed(model_dir, adapters, new_tokens, reps),
            "load": bench_load(model_dir, adapters, {1, 10, 50} if not args.quick else {1, 10}),
        }
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
