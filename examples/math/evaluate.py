"""Exact-match accuracy of the base model vs base + math_specialist, in the same run.

Greedy decoding on the held-out questions (200 two-digit-times-one-digit
problems never seen in training). The prediction is the integer after the last
"answer is" in the reply, else the last integer in it (the adapter shows its
working first, then "The answer is N."; the same rule applies to the base
model, which gets room to finish its own working). Prints a table (and
``--json`` writes the numbers).

``--backend transformers`` (the default) runs raw transformers + peft on the
safetensors conversion of the GGUF, in ``--dtype``. ``--backend llamacpp``
runs ``adaptrix.Engine(backend="llamacpp")`` on the GGUF itself (its own
quantized tensor types; the adapter converted to a GGUF LoRA), one question at
a time, with the same prompts, greedy decoding, token limits and scoring.

    python examples/math/evaluate.py [--adapter examples/adapters/math_specialist] [--limit 200] [--backend llamacpp]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INTEGER = re.compile(r"-?\d+")
ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?(-?\d+)", re.IGNORECASE)


def final_integer(text: str) -> int | None:
    """The integer after the last "answer is", else the last integer in ``text``."""
    text = text.replace(",", "")
    stated = ANSWER_IS.findall(text)
    if stated:
        return int(stated[-1])
    numbers = INTEGER.findall(text)
    return int(numbers[-1]) if numbers else None


def load_base(model: str | None, dtype: str = "float32"):
    """Model + tokenizer; the embedded GGUF goes through adaptrix's safetensors cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None:
        from adaptrix.models import gguf_cache
        from adaptrix.models.default_model import default_model_path

        model = str(gguf_cache.cached_folder(default_model_path()).folder)
    tok = AutoTokenizer.from_pretrained(model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    lm.eval()
    return lm, tok


def generate_all(model, tok, questions: list[str], batch_size: int, max_new_tokens: int, label: str) -> list[str]:
    import torch
    from tqdm.auto import tqdm

    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in questions]
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=label, unit="batch"):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def transformers_answers(args, questions: list[str]):
    """(label, answers, seconds) for the base model and the adapter: raw transformers + peft, batched."""
    import torch
    from peft import PeftModel

    torch.set_num_threads(args.threads)
    base, tok = load_base(args.model, args.dtype)
    model = PeftModel.from_pretrained(base, args.adapter)
    for label in ("base", "math_specialist"):
        start = time.perf_counter()
        if label == "base":
            with model.disable_adapter():
                answers = generate_all(model, tok, questions, args.batch_size, args.base_max_new_tokens, label)
        else:
            answers = generate_all(model, tok, questions, args.batch_size, args.max_new_tokens, label)
        yield label, answers, time.perf_counter() - start


def engine_answers(args, questions: list[str]):
    """(label, answers, seconds) for the base model and the adapter through ``adaptrix.Engine(backend=...)``."""
    from tqdm.auto import tqdm

    from adaptrix import Engine

    engine = Engine(args.model, backend=args.backend, progress=False)
    engine.initialize()
    try:
        runtime = getattr(engine.runner, "runtime", None)
        if runtime is not None and hasattr(runtime, "set_threads"):  # llama.cpp: decode threads
            runtime.set_threads(args.threads)
        engine.load_adapter(args.adapter, name="math_specialist", activate=False)
        for label, adapter, limit in (("base", None, args.base_max_new_tokens),
                                      ("math_specialist", "math_specialist", args.max_new_tokens)):
            start = time.perf_counter()
            answers = [
                engine.generate(q, adapter=adapter, temperature=0, repetition_penalty=1.0, max_new_tokens=limit,
                                use_context=False)
                for q in tqdm(questions, desc=label, unit="question")
            ]
            yield label, answers, time.perf_counter() - start
    finally:
        engine.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=str(REPO / "examples/adapters/math_specialist"))
    ap.add_argument("--data", default=str(HERE / "heldout.jsonl"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="for the adapter (its replies are ~40 tokens)")
    ap.add_argument("--base-max-new-tokens", type=int, default=128, help="room for the base model's own working")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="weights and compute dtype (transformers backend)")
    ap.add_argument("--backend", default="transformers", choices=("transformers", "llamacpp"),
                    help="transformers: raw transformers + peft; llamacpp: adaptrix's llama.cpp backend on the GGUF")
    ap.add_argument("--show", type=int, default=5, help="print this many example answers per model")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()][: args.limit]
    questions = [r["messages"][0]["content"] for r in rows]
    gold = [final_integer(r["messages"][-1]["content"]) for r in rows]

    runs = transformers_answers(args, questions) if args.backend == "transformers" else engine_answers(args, questions)
    results = {}
    for label, answers, seconds in runs:
        correct = [final_integer(a) == g for a, g in zip(answers, gold)]
        results[label] = {
            "correct": sum(correct), "total": len(correct), "accuracy": sum(correct) / len(correct),
            "seconds": round(seconds, 1),
            "examples": [{"q": q, "a": a, "gold": g} for q, a, g in list(zip(questions, answers, gold))[: args.show]],
        }
    how = args.dtype if args.backend == "transformers" else f"{args.backend}, GGUF tensor types"
    print(f"\nHeld-out exact match ({len(questions)} questions, greedy, {how}, {args.threads} threads, final answer of the reply)\n")
    print(f"| model | correct | accuracy | seconds |\n|---|---|---|---|")
    for label, r in results.items():
        name = "SmolLM2-135M-Instruct (base)" if label == "base" else "base + math_specialist"
        print(f"| {name} | {r['correct']}/{r['total']} | {100 * r['accuracy']:.1f}% | {r['seconds']} |")
    gap = 100 * (results["math_specialist"]["accuracy"] - results["base"]["accuracy"])
    print(f"\ndifference: {gap:+.1f} points")
    for label, r in results.items():
        print(f"\n{label} examples:")
        for ex in r["examples"]:
            print(f"  {ex['q']!r} -> {ex['a'].strip()!r} (expected {ex['gold']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
