"""The adapter manager's server-facing API: atomic ``replace``, cached compositions held while in use, and the
Engine's ``history=`` (a request's own messages, stored nowhere)."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

PROMPT = "What is machine learning?"
GREEDY = dict(max_new_tokens=8, temperature=0, repetition_penalty=1.0, raw=True)


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    from support.adapters import make_adapter

    model_dir = tiny_model("qwen3")
    adir = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(("a1", "a2", "a3", "a4")):
        make_adapter(model_dir, adir / name, seed=i + 1)
    make_adapter(model_dir, adir / "chat", seed=9, target_modules=("q_proj", "v_proj", "gate_proj", "down_proj"))
    return model_dir, adir


@pytest.fixture()
def engine(setup):
    from support.adapters import open_engine

    yield from open_engine(*setup)


def _tokens(engine, adapter):
    return engine.generate_detailed(PROMPT, adapter=adapter, **GREEDY).token_ids


# -- replace -----------------------------------------------------------------------------------------


def test_replace_swaps_the_weights_and_says_so(engine, setup):
    adir = setup[1]
    want_a1, want_a2 = _tokens(engine, "a1"), _tokens(engine, "a2")
    assert want_a1 != want_a2
    first = engine.adapters.replace("rt", adir / "a1")  # nothing of that name yet: a plain load
    assert first.replaced is False and first.report.ok and _tokens(engine, "rt") == want_a1
    second = engine.adapters.replace("rt", adir / "a2")
    assert second.replaced is True and second.info.path == str(adir / "a2")
    assert _tokens(engine, "rt") == want_a2


def test_replace_refused_by_validation_keeps_the_old_adapter_serving(engine, setup, tmp_path):
    from adaptrix.errors import AdapterIncompatibleError, AdapterPickleError

    adir = setup[1]
    engine.adapters.replace("rt", adir / "a1")
    want = _tokens(engine, "rt")
    bad = tmp_path / "bad"
    shutil.copytree(adir / "a2", bad)
    (bad / "adapter_model.safetensors").write_bytes((bad / "adapter_model.safetensors").read_bytes()[:200])
    with pytest.raises(AdapterIncompatibleError, match="truncated") as err:
        engine.adapters.replace("rt", bad)
    assert err.value.report.errors and not err.value.report.ok
    pickled = tmp_path / "pickled"
    shutil.copytree(adir / "a2", pickled)
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "adapter_model.safetensors")), str(pickled / "adapter_model.bin"))
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterPickleError, match="pickle"):
        engine.adapters.replace("rt", pickled)
    assert engine.adapters.info("rt").path == str(adir / "a1")
    assert _tokens(engine, "rt") == want


def test_replace_failing_while_loading_keeps_the_old_adapter_serving(engine, setup, monkeypatch):
    """The new adapter passes validation, then loading it fails half-way (inside peft): the old one is back,
    loaded, active as before, answering as before."""
    from peft.tuners.lora.layer import LoraLayer

    from adaptrix.errors import AdapterError

    adir = setup[1]
    engine.adapters.replace("rt", adir / "a1")
    engine.switch_adapter("rt")
    want = _tokens(engine, "rt")
    original, calls = LoraLayer.update_layer, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # once: putting the old adapter back reads its folder again
            raise RuntimeError("disk went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "update_layer", flaky)
    with pytest.raises(AdapterError, match="disk went away"):
        engine.adapters.replace("rt", adir / "chat")
    monkeypatch.undo()
    assert calls  # it did fail while loading, not before
    assert engine.adapters.info("rt").path == str(adir / "a1") and engine.active_adapter == "rt"
    assert _tokens(engine, "rt") == want
    assert _tokens(engine, None) != want


def test_a_composition_is_marked_and_never_replaced_silently(engine):
    from adaptrix.errors import AdapterError

    info = engine.compose_adapters({"a1": 0.5, "a2": 0.5}, "mix", method="cat")
    assert info.composed and not engine.adapters.info("a1").composed
    with pytest.raises(AdapterError, match="composition"):
        engine.adapters.replace("mix", engine.adapters.info("a3").path)


# -- cached compositions, held while in use --------------------------------------------------------------


def _composed(engine):
    return sorted(r["name"] for r in engine.list_adapters() if r["name"].startswith("composed-"))


def test_a_held_composition_is_built_once_and_answers_as_composed(engine):
    weights = (("a1", 0.3), ("a2", 0.7))
    with engine.adapters.hold(weights=weights) as hold:
        name = hold.name
        got = _tokens(engine, name)
    with engine.adapters.hold(weights=weights) as again:
        assert again.name == name
    assert _composed(engine) == [name]
    engine.compose_adapters(dict(weights), "oracle", method="cat")
    assert got == _tokens(engine, "oracle")


def test_compositions_are_bounded_and_a_held_one_is_never_unloaded(engine, monkeypatch):
    from adaptrix.adapters import compositions
    from adaptrix.errors import AdapterError

    monkeypatch.setattr(compositions, "MAX_COMPOSITIONS", 2)
    mixes = [(("a1", 0.5), ("a2", 0.5)), (("a1", 0.2), ("a3", 0.8)), (("a2", 0.4), ("a4", 0.6)),
             (("a3", 0.1), ("a4", 0.9)), (("a1", 0.9), ("a4", 0.1))]
    kept = engine.adapters.hold(weights=mixes[0])
    want = _tokens(engine, kept.name)
    for mix in mixes[1:4]:
        engine.adapters.hold(weights=mix).release()
        assert len(_composed(engine)) == 2 and kept.name in _composed(engine)
    with pytest.raises(AdapterError, match="in use"):
        engine.unload_adapter(kept.name)
    assert _tokens(engine, kept.name) == want
    kept.release()
    kept.release()  # idempotent
    newest = engine.adapters.hold(weights=mixes[4])
    newest.release()
    assert kept.name not in _composed(engine) and len(_composed(engine)) == 2  # the least recently used went


def test_unloading_or_replacing_a_part_unloads_its_cached_compositions(engine, setup):
    adir = setup[1]
    engine.adapters.replace("rt", adir / "a1")
    with engine.adapters.hold(weights=(("rt", 0.5), ("a2", 0.5))) as hold:
        stale = hold.name
    with engine.adapters.hold(weights=(("a3", 0.5), ("a2", 0.5))) as other:
        unrelated = other.name
    engine.adapters.replace("rt", adir / "a4")
    assert _composed(engine) == [unrelated]  # it held rt's old weights
    with engine.adapters.hold(weights=(("rt", 0.5), ("a2", 0.5))) as rebuilt:
        got = _tokens(engine, rebuilt.name)
    engine.compose_adapters({"a4": 0.5, "a2": 0.5}, "oracle", method="cat")
    assert got == _tokens(engine, "oracle") and rebuilt.name == stale
    engine.unload_adapter("a2")
    assert _composed(engine) == []


# -- history= ---------------------------------------------------------------------------------------------


def test_history_answers_as_a_stored_conversation_and_stores_nothing(engine):
    from adaptrix.errors import GenerationError

    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."}]
    settings = dict(max_new_tokens=8, temperature=0)
    engine.conversations.get("oracle").messages = [dict(m) for m in history]
    want = engine.generate_detailed("What is my name?", conversation="oracle", **settings)
    engine.reset_context("oracle")
    got = engine.generate_detailed("What is my name?", history=history, **settings)
    assert got.token_ids == want.token_ids and got.prompt_tokens == want.prompt_tokens
    assert got.prompt_tokens > engine.generate_detailed("What is my name?", **settings).prompt_tokens
    stream = engine.stream_detailed("What is my name?", history=history, **settings)
    assert "".join(stream) == want.text and stream.result.token_ids == want.token_ids
    assert engine.conversations.names() == [] or all(not engine.get_history(n) for n in engine.conversations.names())
    with pytest.raises(GenerationError, match="history"):
        engine.generate("hi", history=history, conversation="x")
    with pytest.raises(GenerationError, match=r"history\[0\]"):
        engine.generate("hi", history=[{"role": "tool", "content": "x"}])


# -- the same API on llama.cpp (real weights, the shared session engine) -------------------------------------


def test_llamacpp_replace_and_held_compositions(smollm2_llamacpp):
    from pathlib import Path

    from adaptrix.errors import AdapterError

    engine = smollm2_llamacpp
    examples = Path(__file__).resolve().parents[1] / "examples" / "adapters"
    settings = dict(temperature=0, max_new_tokens=12)
    question = "What is 25 times 8?"
    try:
        engine.adapters.replace("rt", examples / "pirate_style")
        pirate = engine.generate(question, adapter="rt", **settings)
        assert engine.adapters.replace("rt", examples / "math_specialist").replaced
        math = engine.generate(question, adapter="rt", **settings)
        assert math != pirate
        with engine.adapters.hold(weights=(("rt", 1.0),)) as hold:
            assert engine.generate(question, adapter=hold.name, **settings) == math
        engine.unload_adapter("rt")  # its cached composition goes with it, no "part of composition" refusal
        assert not [r for r in engine.list_adapters() if r["name"] in ("rt", hold.name)]
        engine.adapters.replace("rt", examples / "math_specialist")
        engine.compose_adapters({"rt": 1.0}, "user_mix", method="cat")  # a user's own composition still guards
        with pytest.raises(AdapterError, match="part of composition"):
            engine.unload_adapter("rt")
        with pytest.raises(AdapterError, match="part of composition"):
            engine.adapters.replace("rt", examples / "pirate_style")
        assert engine.generate(question, adapter="rt", **settings) == math
    finally:
        for name in ("user_mix", "rt"):
            if name in engine.adapters.loaded_names():
                engine.unload_adapter(name)
