"""How often the answer is in pirate voice, base vs base + pirate_style, on questions not in the data.

    python examples/pirate/evaluate.py [--adapter examples/adapters/pirate_style]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "examples" / "math"))

QUESTIONS = [
    "What is machine learning?", "What is the capital of Spain?", "How do I boil an egg?",
    "What is a rainbow?", "Why do we sleep?", "What is chess?", "What is the tallest mountain?",
    "How do fish breathe?", "What is a hospital?", "What is a bicycle?", "Name a primary color.",
    "What is democracy?", "How does a phone work?", "What is a library?", "What is bread made of?",
    "What is 25 times 8?", "Who painted the Mona Lisa?", "What is a desert?", "What is an atom?",
    "Describe a forest.",
]


def is_pirate(text: str) -> bool:
    t = text.lower()
    return t.startswith(("arr", "ahoy")) or "matey" in t or "yo ho" in t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=str(REPO / "examples/adapters/pirate_style"))
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from evaluate import generate_all, load_base
    from peft import PeftModel

    torch.set_num_threads(args.threads)
    base, tok = load_base(None)
    model = PeftModel.from_pretrained(base, args.adapter)
    with model.disable_adapter():
        plain = generate_all(model, tok, QUESTIONS, 20, args.max_new_tokens, "base")
    styled = generate_all(model, tok, QUESTIONS, 20, args.max_new_tokens, "pirate_style")
    n = len(QUESTIONS)
    print(f"\nPirate voice on {n} questions not in the training data (greedy)\n")
    print("| model | pirate answers |\n|---|---|")
    print(f"| SmolLM2-135M-Instruct (base) | {sum(map(is_pirate, plain))}/{n} |")
    print(f"| base + pirate_style | {sum(map(is_pirate, styled))}/{n} |\n")
    for q, a, b in list(zip(QUESTIONS, plain, styled))[:4]:
        print(f"{q}\n  base:   {a.strip()!r}\n  pirate: {b.strip()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
