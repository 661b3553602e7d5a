"""OpenAI's logit_bias, presence_penalty and frequency_penalty on both backends and every generation path.

Oracles: the raw model's logits (a transformers forward pass, llama.cpp's ``runtime.logits``) with OpenAI's
rule computed here by hand (``logit[t] += bias[t] - presence * (count[t] > 0) - frequency * count[t]``, counts
over the generated tokens only), decoded greedily one token at a time.
"""

from __future__ import annotations

import math

import pytest

from adaptrix.errors import GenerationError

PROMPT = "List the numbers from one to ten, separated by commas."
STEPS = 16
PENALTIES = dict(presence_penalty=0.7, frequency_penalty=1.3)


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def engine(request):
    return request.getfixturevalue("smollm2_engine" if request.param == "transformers" else "smollm2_llamacpp")


def _raw_logits(engine, ids):
    """The model's next-token logits after ``ids``, as a list of floats, with no sampling rule applied."""
    if engine.runner.backend == "llamacpp":
        return [float(x) for x in engine.runner.runtime.logits(list(ids))]
    import torch

    with torch.inference_mode():
        out = engine.model(input_ids=torch.tensor([list(ids)]))
    return out.logits[0, -1].float().tolist()


def _oracle(engine, prompt_ids, steps, *, presence=0.0, frequency=0.0, bias=None, count_prompt=False):
    """Greedy tokens with OpenAI's rule applied by hand to the raw logits (the prompt does not count, unless
    ``count_prompt``: what a wrong implementation would do)."""
    generated: list[int] = []
    eos = set(engine.runner.eos_ids)
    for _ in range(steps):
        logits = _raw_logits(engine, list(prompt_ids) + generated)
        for t, b in (bias or {}).items():
            logits[t] += b
        counted = (list(prompt_ids) if count_prompt else []) + generated
        for t in set(counted):
            logits[t] -= presence + frequency * counted.count(t)
        token = max(range(len(logits)), key=logits.__getitem__)
        generated.append(token)
        if token in eos:
            break
    return generated


def _step_decode(engine, prompt, **options):
    decoder = engine.step_decoder(max_rows=2)
    assert decoder is not None
    try:
        row, _ = decoder.add(0, engine.prepare_request(prompt, raw=True, **options), None)
        while row.finish_reason is None:
            decoder.step()
        return list(decoder.finish(row).token_ids)
    finally:
        decoder.close()


def _paths(engine, prompt, **options):
    """The token ids of ``prompt`` through generate, stream, generate_batch and the step decoder."""
    detailed = engine.generate_detailed(prompt, raw=True, **options)
    stream = engine.stream_detailed(prompt, raw=True, **options)
    for _ in stream:
        pass
    batch = engine.generate_batch_detailed([prompt, prompt], raw=True, **options)
    return {"generate": list(detailed.token_ids), "stream": list(stream.result.token_ids),
            "batch": [list(r.token_ids) for r in batch], "steps": _step_decode(engine, prompt, **options)}


def _prompt_ids(engine):
    return engine.prepare_request(PROMPT, raw=True, max_new_tokens=STEPS).input_ids


def test_penalties_change_a_repetitive_greedy_answer_as_the_hand_computed_rule_predicts(engine):
    plain = engine.generate_detailed(PROMPT, raw=True, temperature=0, max_new_tokens=STEPS).token_ids
    expected = _oracle(engine, _prompt_ids(engine), STEPS, presence=PENALTIES["presence_penalty"],
                       frequency=PENALTIES["frequency_penalty"])
    assert expected != list(plain)[:len(expected)], "the penalties should change this answer"
    counting_the_prompt = _oracle(engine, _prompt_ids(engine), STEPS, count_prompt=True,
                                  presence=PENALTIES["presence_penalty"], frequency=PENALTIES["frequency_penalty"])
    assert counting_the_prompt != expected, "this test should tell a rule that counts the prompt apart"
    for path, ids in _paths(engine, PROMPT, temperature=0, max_new_tokens=STEPS, **PENALTIES).items():
        for got in ids if path == "batch" else [ids]:
            assert got == expected, path


def test_a_bias_of_minus_100_on_the_greedy_token_gives_the_runner_up(engine):
    logits = _raw_logits(engine, _prompt_ids(engine))
    order = sorted(range(len(logits)), key=logits.__getitem__, reverse=True)
    greedy, runner_up = order[0], order[1]
    for path, ids in _paths(engine, PROMPT, temperature=0, max_new_tokens=1, logit_bias={greedy: -100}).items():
        for got in ids if path == "batch" else [ids]:
            assert got[0] == runner_up, path


def test_a_bias_of_plus_100_forces_a_token_even_when_sampling(engine):
    token = 42  # an unlikely token: "K"
    for path, ids in _paths(engine, PROMPT, temperature=1.0, seed=5, max_new_tokens=3,
                            logit_bias={token: 100}).items():
        for got in ids if path == "batch" else [ids]:
            assert got == [token] * 3, path


def test_bias_and_penalties_follow_the_hand_computed_rule_together(engine):
    logits = _raw_logits(engine, _prompt_ids(engine))
    greedy = max(range(len(logits)), key=logits.__getitem__)
    bias = {greedy: -100, 11: 5.5}
    expected = _oracle(engine, _prompt_ids(engine), 8, presence=-0.5, frequency=0.9, bias=bias)
    got = engine.generate_detailed(PROMPT, raw=True, temperature=0, max_new_tokens=8, logit_bias=bias,
                                   presence_penalty=-0.5, frequency_penalty=0.9).token_ids
    assert list(got) == expected


def test_a_bias_key_outside_the_vocabulary_is_refused_naming_it(engine):
    from adaptrix.generation.token_ids import vocabulary_size

    size = vocabulary_size(engine.tokenizer)
    with pytest.raises(GenerationError, match=f"token id {size + 7}"):
        engine.generate(PROMPT, logit_bias={size + 7: 1.0}, max_new_tokens=2)
    with pytest.raises(GenerationError, match=f"token id {size + 7}"):
        engine.prepare_request(PROMPT, logit_bias={size + 7: 1.0})


@pytest.mark.parametrize("options, message", [
    (dict(presence_penalty=2.5), "presence_penalty must be from -2 to 2"),
    (dict(frequency_penalty=-3), "frequency_penalty must be from -2 to 2"),
    (dict(frequency_penalty=math.nan), "frequency_penalty must be a finite number"),
    (dict(logit_bias={5: 101}), r"logit_bias\[5\] must be a number from -100 to 100"),
    (dict(logit_bias={-1: 1}), "logit_bias keys must be token ids"),
    (dict(logit_bias={"5": 1}), "logit_bias keys must be token ids"),
    (dict(logit_bias=[1, 2]), "logit_bias must be a dict"),
])
def test_bad_values_are_refused_naming_the_setting(options, message):
    from adaptrix.generation.request import GenerationRequest

    with pytest.raises(GenerationError, match=message):
        GenerationRequest.build("hi", **options)
