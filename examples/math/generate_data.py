"""Generate the math_specialist data: arithmetic questions with exact answers (seeded).

Writes ``train.jsonl`` and ``heldout.jsonl`` next to this file. The held-out
split is 200 two-digit-times-one-digit questions; no (operation, operands) pair
of it appears in the train split in any phrasing or operand order, so the
evaluation measures arithmetic on unseen problems, not recall of seen ones.
Answers show their working and end with "The answer is N.", which the evaluation reads.

    python examples/math/generate_data.py [--seed 0] [--train 6000]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

PHRASES = {
    "*": [
        "What is {a} times {b}?", "What's {a} times {b}?", "Compute {a} * {b}", "Compute {a} x {b}.",
        "Multiply {a} by {b}", "Multiply {a} by {b}.", "What is {a} multiplied by {b}?", "Calculate {a} × {b}.",
        "{a} * {b} = ?", "What is the product of {a} and {b}?", "How much is {a} times {b}?", "what is {a}*{b}",
    ],
    "+": [
        "What is {a} plus {b}?", "Compute {a} + {b}", "What's {a} + {b}?", "Add {a} and {b}.",
        "What is the sum of {a} and {b}?", "Calculate {a} + {b}.", "{a} + {b} = ?", "How much is {a} plus {b}?",
    ],
    "-": [
        "What is {a} minus {b}?", "What's {a} minus {b}?", "Compute {a} - {b}", "Subtract {b} from {a}.",
        "Calculate {a} - {b}.", "{a} - {b} = ?", "What is {a} take away {b}?", "How much is {a} minus {b}?",
    ],
}


def answer_text(op: str, a: int, b: int) -> str:
    """The answer the adapter learns: a short worked line, then "The answer is N."

    Two-digit times one-digit goes through tens and units (48 × 4 = 40 × 4 + 8 × 4
    = 160 + 32 = 192): a 135M model gets the pieces right far more often than the
    whole product at once (a direct "The answer is N." reached 28% on 50 held-out
    questions after 40 steps, with near misses such as 180 for 192).
    """
    result = solve(op, a, b)
    if op == "*":
        big, small = (a, b) if a >= b else (b, a)
        tens, units = divmod(big, 10)
        if small < 10 and tens and units:
            work = (f"{big} × {small} = {tens * 10} × {small} + {units} × {small} = "
                    f"{tens * 10 * small} + {units * small} = {result}.")
        else:
            work = f"{big} × {small} = {result}."
        return f"{work} The answer is {result}."
    sign = "+" if op == "+" else "-"
    return f"{a} {sign} {b} = {result}. The answer is {result}."


def solve(op: str, a: int, b: int) -> int:
    return a * b if op == "*" else a + b if op == "+" else a - b


def key(op: str, a: int, b: int) -> tuple:
    """Identity of a problem regardless of phrasing; ``*`` and ``+`` are commutative."""
    return (op, min(a, b), max(a, b)) if op in "*+" else (op, a, b)


def sample(op: str, a: int, b: int, rng: random.Random) -> dict:
    if op in "*+" and rng.random() < 0.5:
        a, b = b, a
    question = rng.choice(PHRASES[op]).format(a=a, b=b)
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer_text(op, a, b)}]}


def two_by_one() -> list[tuple[str, int, int]]:
    return [("*", a, b) for a in range(10, 100) for b in range(2, 10)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=6000, help="number of training samples")
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    pool = two_by_one()
    rng.shuffle(pool)
    held = pool[: args.heldout]
    held_keys = {key(*p) for p in held}
    train_mul = pool[args.heldout:]

    def draw() -> tuple[str, int, int]:
        r = rng.random()
        if r < 0.8:  # the evaluated skill: two-digit times one-digit, unseen pairs held out
            return rng.choice(train_mul)
        if r < 0.9:
            return ("*", rng.randint(2, 12), rng.randint(2, 12))
        if r < 0.95:
            return ("+", rng.randint(10, 99), rng.randint(1, 99))
        a = rng.randint(10, 99)
        return ("-", a, rng.randint(1, a))

    train = []
    while len(train) < args.train:
        problem = draw()
        if key(*problem) in held_keys:
            continue
        train.append(sample(*problem, rng))
    heldout = [sample(*p, rng) for p in held]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        with open(args.out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    train_q = {r["messages"][0]["content"] for r in train}
    assert not train_q & {r["messages"][0]["content"] for r in heldout}
    print(f"wrote {len(train)} train and {len(heldout)} held-out samples to {args.out} (seed {args.seed})")


if __name__ == "__main__":
    main()
