"""Join schedules for step decoders: rows that join at different steps, with one adapter or several.

A schedule is a tuple of ``(join step, prompt, adapter)``; :func:`run` drives a
step decoder through it (each row is added before the step it joins at, rows
leave when they finish) and returns each row's result and streamed text, to
compare with ``engine.generate_detailed`` of the same request alone.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "adapters"
OCEAN = "Tell me a short fact about the ocean."
TIMES = "What is 13 times 7?"
COLORS = "Name three colors."
MOON = "Write a poem about the moon."
MATH, PIRATE = str(EXAMPLES / "math_specialist"), str(EXAMPLES / "pirate_style")

#: name -> schedule. The first is issue 15's reproducer (llama.cpp, grouped: the first row's answer changed
#: when a second row of its adapter joined at step 5); the next two change an answer there too.
SCHEDULES = {
    "same-adapter-join-at-5": ((0, OCEAN, MATH), (5, TIMES, MATH)),
    "same-adapter-together": ((0, COLORS, MATH), (0, OCEAN, MATH)),
    "same-adapter-three-staggered": ((0, OCEAN, MATH), (1, COLORS, MATH), (6, MOON, MATH)),
    "same-adapter-pirate-pair": ((0, OCEAN, PIRATE), (0, TIMES, PIRATE)),
    "same-adapter-four": ((0, OCEAN, PIRATE), (1, MOON, PIRATE), (3, COLORS, PIRATE), (4, TIMES, PIRATE)),
    "mixed-four": ((0, OCEAN, MATH), (2, TIMES, PIRATE), (3, COLORS, None), (5, MOON, MATH)),
    "mixed-pairs": ((0, OCEAN, PIRATE), (0, OCEAN, MATH), (4, TIMES, PIRATE), (6, MOON, None)),
}


def run(engine, schedule, *, tokens: int, batch_invariant: bool, max_rows: int = 4) -> dict:
    """Row index -> ``(GenerationResult, streamed text)`` for every row of ``schedule``."""
    decoder = engine.step_decoder(max_rows=max_rows, batch_invariant=batch_invariant)
    assert decoder is not None
    texts: dict[int, str] = {}
    done: dict[int, tuple] = {}
    step = 0
    try:
        while len(done) < len(schedule):
            for i, (join, prompt, adapter) in enumerate(schedule):
                if join == step:
                    prepared = engine.prepare_request(prompt, adapter=adapter, temperature=0, max_new_tokens=tokens)
                    _, texts[i] = decoder.add(i, prepared, adapter)
            for row, text in decoder.step():
                texts[row.key] += text
            for row in [r for r in decoder.rows if r.finish_reason]:
                texts[row.key] += decoder.tail(row)
                decoder.remove(row)
                done[row.key] = (decoder.finish(row), texts[row.key])
            step += 1
            assert step < 10 * tokens, "the schedule never finished"
    finally:
        for row in list(decoder.rows):
            decoder.remove(row)
    return done


def alone(engine, cache: dict, prompt: str, adapter: str | None, tokens: int):
    """``engine.generate_detailed`` of the request alone (memoised in ``cache``)."""
    key = (prompt, adapter, tokens)
    if key not in cache:
        cache[key] = engine.generate_detailed(prompt, adapter=adapter, temperature=0, max_new_tokens=tokens)
    return cache[key]
