"""The transformers step decoder (``adaptrix serve``'s batching): newcomers prefilled together.

Oracle: the engine's own ``generate_detailed`` (transformers ``generate``) for
each request alone. With ``batch_invariant=True`` (on the real SmolLM2 and its
example adapters, many join schedules) each row's logits are bit for bit those
``generate`` computes alone, so greedy answers are equal whatever runs beside.
"""

from __future__ import annotations

import pytest

from support import schedules
from support.adapters import make_adapter

N = 10
PROMPTS = [
    "Hi",
    "What is machine learning? Explain it to a child in two sentences.",
    "def add(a, b):",
    "The capital of France is a city on the Seine with many bridges and museums, and",
]


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory, one_thread):
    from adaptrix import Engine

    model = tiny_model("llama")
    ads = tmp_path_factory.mktemp("step-adapters")
    make_adapter(model, ads / "a1", seed=1)
    make_adapter(model, ads / "a2", seed=2)
    e = Engine(str(model), adapters_dir=str(ads), progress=False)
    e.initialize()
    yield e
    e.cleanup()


def _prepared(engine, prompt, adapter):
    return engine.prepare_request(prompt, adapter=adapter, temperature=0, max_new_tokens=N, raw=True)


def _drain(decoder) -> dict:
    """Step until every row has finished; each row's key -> its tokens."""
    finished = {}
    while decoder.rows:
        decoder.step()
        for row in [r for r in decoder.rows if r.finish_reason]:
            decoder.remove(row)
            finished[row.key] = decoder.finish(row).token_ids
    return finished


def _alone(engine, prompt, adapter):
    return engine.generate_detailed(prompt, adapter=adapter, temperature=0, max_new_tokens=N, raw=True).token_ids


def test_prompts_added_together_decode_as_each_alone(engine):
    """Prompts of different lengths and adapters, added together (one padded prefill) and while others
    run, each get the tokens ``generate`` gives them alone."""
    decoder = engine.step_decoder(max_rows=8)
    adapters = [None, "a1", "a2", "a1"]
    first = decoder.add_many([(i, _prepared(engine, p, a), a) for i, (p, a) in enumerate(zip(PROMPTS, adapters))])
    decoder.step()
    decoder.step()
    late = decoder.add_many([("late", _prepared(engine, PROMPTS[1], "a2"), "a2"),
                             ("late2", _prepared(engine, PROMPTS[0], None), None)])
    assert not [o for o in first + late if isinstance(o, BaseException)]
    expected = {i: _alone(engine, p, a) for i, (p, a) in enumerate(zip(PROMPTS, adapters))}
    expected["late"] = _alone(engine, PROMPTS[1], "a2")
    expected["late2"] = _alone(engine, PROMPTS[0], None)
    assert _drain(decoder) == expected
    assert len({tuple(v) for v in expected.values()}) > 2  # the adapters change the answers


def test_similar_prompts_share_one_prefill_and_long_ones_do_not(engine):
    from adaptrix.backends.transformers import batching

    calls = []
    hook = engine.model.register_forward_hook(lambda module, args, kwargs, out: calls.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        decoder = engine.step_decoder(max_rows=8)
        decoder.add_many([(i, _prepared(engine, PROMPTS[1], a), a) for i, a in enumerate([None, "a1", "a2"])])
        assert calls == [(3, len(_prepared(engine, PROMPTS[1], None).input_ids))]
        calls.clear()
        long = " ".join(["word"] * 40)  # about 200 tokens (byte-level tokenizer)
        decoder.add_many([("short", _prepared(engine, PROMPTS[0], None), None),
                          ("long", _prepared(engine, long, None), None)])
        assert sorted(c[0] for c in calls) == [1, 1]  # "Hi" is not padded to the long prompt
        _drain(decoder)
    finally:
        hook.remove()
    lengths = [700] + [5] * 20 + [1900, 600]
    assert batching._groups(lengths) == [list(range(1, 21)), [22, 0], [21]]  # similar lengths, bounded size


def test_a_bad_item_fails_alone(engine):
    """A request whose adapter cannot be loaded fails; the ones prefilled with it still run."""
    from adaptrix.errors import AdapterError

    decoder = engine.step_decoder(max_rows=8)
    good = _prepared(engine, PROMPTS[2], "a1")
    outcomes = decoder.add_many([("ok", good, "a1"), ("bad", _prepared(engine, PROMPTS[2], None), "no_such"),
                                 ("ok2", _prepared(engine, PROMPTS[2], None), None)])
    assert isinstance(outcomes[1], AdapterError) and "no_such" in str(outcomes[1])
    assert [o[0].key for o in (outcomes[0], outcomes[2])] == ["ok", "ok2"]
    assert [r.key for r in decoder.rows] == ["ok", "ok2"]
    assert _drain(decoder) == {"ok": _alone(engine, PROMPTS[2], "a1"), "ok2": _alone(engine, PROMPTS[2], None)}



@pytest.mark.parametrize("start_wrapped", [False, True])
def test_a_row_keeps_its_answer_while_other_adapters_come_and_go(tiny_model, tmp_path, one_thread, start_wrapped):
    """A server loads and unloads adapters between two steps while rows that use others keep running. The
    first adapter wraps the model in peft and unloading the last one unwraps it: the module and kwargs the
    decoder holds still give the row its answer alone (``TransformersRunner.decoding_model``'s promise)."""
    from adaptrix import Engine

    model = tiny_model("llama")
    make_adapter(model, tmp_path / "a1", seed=1)
    make_adapter(model, tmp_path / "a2", seed=2)
    e = Engine(str(model), adapters_dir=str(tmp_path), progress=False)
    e.initialize()
    try:
        want = _alone(e, PROMPTS[1], None)
        if start_wrapped:
            e.load_adapter("a2", activate=False)
        decoder = e.step_decoder(max_rows=4)
        decoder.add("base", _prepared(e, PROMPTS[1], None), None)
        decoder.step()
        e.load_adapter("a1", activate=False)  # the first adapter (start_wrapped: the second one)
        decoder.step()
        e.unload_adapter("a1")
        if start_wrapped:
            decoder.step()
            e.unload_adapter("a2")  # the last one: the model is unwrapped
        assert _drain(decoder) == {"base": want}
    finally:
        e.cleanup()


def test_a_backend_without_batch_invariant_decoding_is_refused_by_name(engine, monkeypatch):
    """A backend whose runner does not declare ``"batch_invariant"`` gets a clear error for it, and one that
    does not declare ``"step_decode"`` is served one request at a time (no decoder)."""
    from adaptrix.errors import BackendError

    monkeypatch.setattr(engine.runner, "capabilities", frozenset({"step_decode"}))
    assert engine.step_decoder(max_rows=2) is not None
    with pytest.raises(BackendError, match="cannot compute rows as if alone.*--no-batching"):
        engine.step_decoder(max_rows=2, batch_invariant=True)
    monkeypatch.setattr(engine.runner, "capabilities", frozenset())
    assert engine.step_decoder(max_rows=2) is None
    assert engine.step_decoder(max_rows=2, batch_invariant=True) is None  # served alone: invariant already


# -- batch invariance on the real SmolLM2 ------------------------------------------------------------------

SCHEDULE_TOKENS = 12
_ALONE: dict = {}


@pytest.fixture
def smol(smollm2_engine, one_thread):
    """The shared transformers SmolLM2 engine, left as found: no adapters loaded."""
    yield smollm2_engine
    for name in list(smollm2_engine.adapters.loaded_names()):
        smollm2_engine.unload_adapter(name)


@pytest.mark.real_weights
@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_batch_invariant_rows_equal_generate_alone_in_every_join_schedule(smol, name):
    done = schedules.run(smol, schedules.SCHEDULES[name], tokens=SCHEDULE_TOKENS, batch_invariant=True)
    for i, (_, prompt, adapter) in enumerate(schedules.SCHEDULES[name]):
        want = schedules.alone(smol, _ALONE, prompt, adapter, SCHEDULE_TOKENS)
        result, text = done[i]
        assert result.token_ids == want.token_ids, (name, i)
        assert result.text == text == want.text and result.finish_reason == want.finish_reason, (name, i)


@pytest.mark.real_weights
@pytest.mark.parametrize("batch_invariant", [True, False])
def test_batch_invariant_rows_get_the_logits_generate_computes_alone(smol, batch_invariant):
    """Bit for bit, every step, with a row of the same adapter beside it; batched rows (the default) round
    differently (float32 matmuls of another shape, the mixed-adapter LoRA path), which is what the option
    is for."""
    import torch

    math = schedules.MATH
    head = smol.model.lm_head
    seen: list = []
    hook = head.register_forward_hook(lambda module, args, out: seen.append(out[0, -1].clone()))
    try:
        smol.generate_detailed(schedules.OCEAN, adapter=math, temperature=0, max_new_tokens=SCHEDULE_TOKENS)
    finally:
        hook.remove()
    alone = list(seen)
    decoder = smol.step_decoder(max_rows=4, batch_invariant=batch_invariant)
    picked: dict = {0: [], 1: []}
    pick = decoder._pick
    decoder._pick = lambda row, logits: picked[row.key].append(logits[0].clone()) or pick(row, logits)
    for key, prompt in enumerate((schedules.OCEAN, schedules.TIMES)):
        prepared = smol.prepare_request(prompt, adapter=math, temperature=0, max_new_tokens=SCHEDULE_TOKENS)
        decoder.add(key, prepared, math)
    while decoder.rows:
        decoder.step()
        for row in [r for r in decoder.rows if r.finish_reason]:
            decoder.remove(row)
    mine = picked[0][: len(alone)]
    assert len(mine) == len(alone) > 4
    same = [torch.equal(a, b) for a, b in zip(alone, mine)]
    if batch_invariant:
        assert all(same)
    else:
        assert not all(same)


def test_the_runners_decoder_works_with_the_lease_alone_and_never_reaches_into_the_engine(engine, monkeypatch):
    """``Runner.step_decoder`` gets the model lease and nothing of the engine: with every attribute of every
    Engine made to fail, rows still decode to ``generate``'s answers alone."""
    from adaptrix import Engine
    from adaptrix.generation.lease import ModelLease
    from adaptrix.generation.steps import StepDecoder

    requests = {i: (p, a) for i, (p, a) in enumerate(zip(PROMPTS, [None, "a1", "a2", None]))}
    want = {i: _alone(engine, p, a) for i, (p, a) in requests.items()}
    prepared = {i: _prepared(engine, p, a) for i, (p, a) in requests.items()}
    runner, lease = engine.runner, ModelLease()

    def reached(self, name):
        raise AssertionError(f"the step decoder reached into the engine: Engine.{name}")

    monkeypatch.setattr(Engine, "__getattribute__", reached)
    for batch_invariant in (False, True):
        decoder = runner.step_decoder(lease=lease, max_rows=4, batch_invariant=batch_invariant)
        assert isinstance(decoder, StepDecoder)
        outcomes = decoder.add_many([(i, prepared[i], a) for i, (_, a) in requests.items()])
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        assert _drain(decoder) == want, batch_invariant
        assert lease.holder is None  # held only while the decoder ran
