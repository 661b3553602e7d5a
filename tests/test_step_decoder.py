"""The transformers step decoder (``adaptrix serve``'s batching): newcomers prefilled together.

Oracle: the engine's own ``generate_detailed`` (transformers ``generate``) for
each request alone.
"""

from __future__ import annotations

import pytest

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
    from adaptrix import batching

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
    decoder holds still give the row its answer alone (``Engine.decoding_model``'s promise)."""
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
