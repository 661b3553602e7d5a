"""Adapter operations through the real Engine, against a peft PeftModel oracle."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

PROMPTS = ["What is machine learning?", "The capital of France", "def add(a, b):", "Hello, how are you"]
GREEDY = dict(max_new_tokens=8, temperature=0, repetition_penalty=1.0, raw=True)


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    from support.adapters import make_adapter

    model_dir = tiny_model("qwen3")
    adir = tmp_path_factory.mktemp("adapters")
    make_adapter(model_dir, adir / "math", seed=1, meta={"task_type": "math", "description": "sums"})
    make_adapter(model_dir, adir / "code", seed=2)
    make_adapter(model_dir, adir / "chat", seed=3, target_modules=("q_proj", "v_proj", "gate_proj", "down_proj"))
    make_adapter(model_dir, adir / "wide", seed=4, r=8)
    make_adapter(model_dir, adir / "styled", seed=5, meta={"task_type": "style"})
    make_adapter(model_dir, adir / "saver", seed=6, modules_to_save=["lm_head"])
    return model_dir, adir


@pytest.fixture()
def engine(setup):
    from support.adapters import open_engine

    yield from open_engine(*setup)


def _ids(engine, prompt):
    return torch.tensor([engine.tokenizer(prompt).input_ids])


def _logits(engine, prompt, adapter):
    from adaptrix.types import UNSET

    with torch.no_grad(), engine.adapters.scope(adapter if adapter != "active" else UNSET):
        return engine.adapters.generation_model()(_ids(engine, prompt)).logits


def _oracle(model_dir, adapters, active=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    names = list(adapters)
    if not names:
        return base
    pm = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0]).eval()
    for n in names[1:]:
        pm.load_adapter(str(adapters[n]), adapter_name=n)
    pm.set_adapter(active or names[0])
    return pm


def _oracle_tokens(engine, pm, prompt, n=8):
    ids = _ids(engine, prompt)
    with torch.no_grad():
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=engine.tokenizer.pad_token_id, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def test_logits_and_tokens_match_peft_and_base_is_restored(engine, setup):
    model_dir, adir = setup
    base_logits = _logits(engine, PROMPTS[0], None)
    base_tokens = engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids
    assert engine.load_adapter("math") is True  # the seed's API
    info = engine.adapters.info("math")
    assert info.task_type == "math" and engine.active_adapter == "math"
    pm = _oracle(model_dir, {"math": adir / "math"})
    with torch.no_grad():
        expected = pm(_ids(engine, PROMPTS[0])).logits
    got = _logits(engine, PROMPTS[0], "active")
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, base_logits, atol=1e-3)  # the adapter does something
    toks = engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids
    assert list(toks) == _oracle_tokens(engine, pm, PROMPTS[0])[: len(toks)]
    # the active adapter's declared task selects its preset
    math = engine.resolve_settings(task_type="math")
    assert engine.resolve_settings() == math != engine.resolve_settings(adapter=None)
    assert engine.switch_adapter(None) is True
    assert engine.active_adapter is None
    assert torch.equal(_logits(engine, PROMPTS[0], "active"), base_logits)
    assert engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids == base_tokens
    assert engine.unload_adapter("math") is True
    assert torch.equal(_logits(engine, PROMPTS[0], "active"), base_logits)
    assert engine.adapters.generation_model() is engine.model
    assert engine.get_model_info()["adapters_loaded"] == []


def test_adapter_task_type_without_a_preset_selects_none(engine, setup):
    """An adapter's own label ("style") must not break generation: it selects no preset."""
    engine.load_adapter("math", activate=False)
    assert engine.resolve_settings(adapter="math") == engine.resolve_settings(task_type="math")
    engine.load_adapter("styled")
    assert engine.resolve_settings() == engine.resolve_settings(adapter=None)  # "style": no preset
    r = engine.generate_detailed(PROMPTS[0], max_new_tokens=8, raw=True)  # sampling settings left to the engine
    assert r.settings == engine.resolve_settings(task_type=None, max_new_tokens=8)  # no preset applied
    greedy = engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids  # and the styled adapter is what runs
    model_dir, adir = setup
    want = _oracle_tokens(engine, _oracle(model_dir, {"styled": adir / "styled"}), PROMPTS[0])
    assert list(greedy) == want[: len(greedy)]


def test_switch_per_call_and_list(engine, setup):
    model_dir, adir = setup
    engine.load_adapter("math")
    engine.load_adapter("code", activate=False)
    assert engine.active_adapter == "math"
    pm = _oracle(model_dir, {"math": adir / "math", "code": adir / "code"}, active="code")
    with torch.no_grad():
        code_logits = pm(_ids(engine, PROMPTS[1])).logits
    # per call: code for this call only, math stays active
    assert torch.allclose(_logits(engine, PROMPTS[1], "code"), code_logits, atol=1e-5)
    assert engine.active_adapter == "math"
    engine.switch_adapter("code")
    assert torch.allclose(_logits(engine, PROMPTS[1], "active"), code_logits, atol=1e-5)
    rows = {r["name"]: r for r in engine.list_adapters()}
    assert rows["code"]["active"] and rows["code"]["loaded"]
    assert not rows["math"]["active"] and rows["math"]["loaded"]
    assert rows["chat"]["state"] == "available" and not rows["chat"]["loaded"]
    # a per-call name that is only available on disk is loaded on demand
    a = engine.generate_detailed(PROMPTS[2], adapter="chat", **GREEDY).token_ids
    assert "chat" in engine.get_model_info()["adapters_loaded"] and engine.active_adapter == "code"
    pm.load_adapter(str(adir / "chat"), adapter_name="chat")
    pm.set_adapter("chat")
    assert list(a) == _oracle_tokens(engine, pm, PROMPTS[2])[: len(a)]


def test_direct_injection_matches_peft_load_adapter(engine, setup, tmp_path):
    """Adapters after the first skip peft's load_adapter (see adaptrix.adapters.inject): same model as peft's."""
    from adaptrix.adapters.inject import plan
    from support.adapters import make_adapter

    model_dir, adir = setup
    odd = make_adapter(
        model_dir, tmp_path / "odd", seed=5, target_modules=("q_proj", "v_proj", "up_proj"),
        rank_pattern={"up_proj": 8}, alpha_pattern={"v_proj": 16}, use_rslora=True, lora_dropout=0.1,
    )
    engine.load_adapter("math")
    m = engine.adapters
    info = m.info(str(odd))
    assert plan(info, m.index, m.base) is not None  # this adapter takes the direct path
    engine.load_adapter(str(odd), name="odd")  # up_proj is newly wrapped; patterns, rsLoRA, dropout in eval
    pm = _oracle(model_dir, {"math": adir / "math", "odd": odd}, active="odd")
    with torch.no_grad():
        expected = pm(_ids(engine, PROMPTS[3])).logits
    assert torch.allclose(_logits(engine, PROMPTS[3], "active"), expected, atol=1e-5)
    pm.set_adapter("math")
    with torch.no_grad():
        expected = pm(_ids(engine, PROMPTS[3])).logits
    assert torch.allclose(_logits(engine, PROMPTS[3], "math"), expected, atol=1e-5)
    batch = engine.generate_batch_detailed(PROMPTS[:2], adapters=["odd", "math"], **GREEDY)
    assert batch[0].token_ids == engine.generate_detailed(PROMPTS[0], adapter="odd", **GREEDY).token_ids


def test_direct_injection_equals_peft_parameters_in_bfloat16(setup):
    """peft upcasts a bfloat16 model's adapter weights to float32 before copying the file in; so does adaptrix."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptrix.adapters.peft_manager import PeftAdapterManager
    from adaptrix.types import LoadedModel

    model_dir, adir = setup
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()  # noqa: E731
    m = PeftAdapterManager(LoadedModel(model=load(), tokenizer=None, family="qwen", model_id=str(model_dir)), adir)
    m.load("math")
    m.load("chat")
    pm = PeftModel.from_pretrained(load(), str(adir / "math"), adapter_name="math").eval()
    pm.load_adapter(str(adir / "chat"), adapter_name="chat")
    ours, theirs = dict(m.peft.named_parameters()), dict(pm.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)


def test_several_active_adapters_are_summed(engine, setup):
    model_dir, adir = setup
    engine.load_adapter("math")
    engine.load_adapter("code", activate=False)
    engine.switch_adapter(["math", "code"])
    assert engine.active_adapter == ("math", "code")
    pm = _oracle(model_dir, {"math": adir / "math", "code": adir / "code"})
    pm.base_model.set_adapter(["math", "code"])
    with torch.no_grad():
        expected = pm(_ids(engine, PROMPTS[0])).logits
    assert torch.allclose(_logits(engine, PROMPTS[0], "active"), expected, atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "cat", "svd", "ties"])
def test_compose_matches_peft_add_weighted_adapter(engine, setup, method):
    model_dir, adir = setup
    engine.load_adapter("math", activate=False)
    engine.load_adapter("code", activate=False)
    engine.compose_adapters({"math": 0.7, "code": 0.3}, name="mc", method=method, activate=True)
    pm = _oracle(model_dir, {"math": adir / "math", "code": adir / "code"})
    kwargs = {"density": 0.5} if method == "ties" else {}
    pm.add_weighted_adapter(["math", "code"], [0.7, 0.3], "mc", combination_type=method, **kwargs)
    pm.set_adapter("mc")
    with torch.no_grad():
        expected = pm(_ids(engine, PROMPTS[0])).logits
    assert torch.allclose(_logits(engine, PROMPTS[0], "active"), expected, atol=1e-4)


def test_compose_refuses_name_in_use_and_mixed_ranks(engine):
    from adaptrix.errors import AdapterError

    engine.load_adapter("math", activate=False)
    engine.load_adapter("wide", activate=False)
    with pytest.raises(AdapterError, match="'math' is already in use"):
        engine.compose_adapters({"math": 0.5, "code": 0.5}, name="math")
    with pytest.raises(AdapterError, match=r"needs adapters of one rank, got ranks math=4, wide=8.*'cat' or 'svd'"):
        engine.compose_adapters({"math": 0.5, "wide": 0.5}, name="mw", method="linear")
    assert "mw" not in engine.get_model_info()["adapters_loaded"]
    engine.compose_adapters({"math": 0.5, "wide": 0.5}, name="mw", method="cat")  # cat takes mixed ranks


def test_mixed_batch_rows_equal_alone(engine):
    engine.load_adapter("math", activate=False)
    engine.load_adapter("code", activate=False)
    engine.load_adapter("chat", activate=False)
    adapters = ["math", None, "code", "chat"]
    batch = engine.generate_batch_detailed(PROMPTS, adapters=adapters, **GREEDY)
    for prompt, adapter, row in zip(PROMPTS, adapters, batch):
        alone = engine.generate_detailed(prompt, adapter=adapter, **GREEDY)
        assert row.token_ids == alone.token_ids, (prompt, adapter)


def test_mixed_batch_refuses_a_modules_to_save_mix_peft_cannot_serve(engine):
    from adaptrix.errors import AdapterError

    with pytest.raises(AdapterError, match=r"cannot batch adapters \['saver'\] with \['math'\].*'lm_head'"):
        engine.generate_batch(PROMPTS[:2], adapters=["saver", "math"], **GREEDY)
    # Nothing changed: the mix peft can serve (the adapter beside the base) still matches alone.
    batch = engine.generate_batch_detailed(PROMPTS[:2], adapters=["saver", None], **GREEDY)
    assert batch[0].token_ids == engine.generate_detailed(PROMPTS[0], adapter="saver", **GREEDY).token_ids
    assert batch[1].token_ids == engine.generate_detailed(PROMPTS[1], adapter=None, **GREEDY).token_ids


def test_lru_eviction_and_transparent_reload(engine):
    engine.configure_adapters(max_loaded_adapters=2)
    engine.load_adapter("math")
    math_tokens = engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids
    engine.load_adapter("code")
    engine.load_adapter("chat")  # evicts math (least recently used, not active)
    info = engine.get_model_info()
    assert sorted(info["adapters_loaded"]) == ["chat", "code"]
    assert {r["name"]: r["state"] for r in engine.list_adapters()}["math"] == "evicted"
    assert engine.generate_detailed(PROMPTS[0], adapter="math", **GREEDY).token_ids == math_tokens
    assert "math" in engine.get_model_info()["adapters_loaded"]
    assert len(engine.get_model_info()["adapters_loaded"]) == 2


def test_pinned_adapters_are_never_evicted(engine):
    """What a server's running batch relies on: a pinned adapter outlives loads past the budget."""
    from adaptrix.errors import AdapterError

    engine.configure_adapters(max_loaded_adapters=1)
    engine.load_adapter("math", activate=False)
    with engine.adapters.pinned(["math"]):
        engine.load_adapter("code", activate=False)  # the budget evicts the unpinned newcomer, never math
        assert engine.get_model_info()["adapters_loaded"] == ["math"]
        assert {r["name"]: r["state"] for r in engine.list_adapters()}["code"] == "evicted"
        with pytest.raises(AdapterError, match="in use"):
            engine.unload_adapter("math")
    engine.load_adapter("chat", activate=False)  # released: back down to the budget
    assert engine.get_model_info()["adapters_loaded"] == ["chat"]


def test_pins_count_holders_never_weights():
    """The one owner of pin counting: a composition's weights (a mapping) count one holder per source, a
    release never drives a count below zero, and only names are counted."""
    from adaptrix.adapters.pins import Pins
    from adaptrix.errors import EngineStateError

    pins = Pins()
    pins.hold({"math": 0.1, "pirate": 0.9})
    pins.hold({"math": 0.2, "pirate": -0.8})
    assert pins["math"] == pins["pirate"] == 2
    with pins.holding(["math", "math"]):
        assert pins["math"] == 4
    pins.release({"math": 0.1, "pirate": 0.9})
    pins.release(["math", "pirate"])
    assert pins["math"] == pins["pirate"] == 0
    with pytest.raises(EngineStateError, match="released more often"):
        pins.release(["math"])
    assert pins["math"] == 0
    with pytest.raises(TypeError, match="by name"):
        pins.hold([0.5])


def test_residency_limit_given_to_the_constructor(setup):
    from adaptrix import Engine

    model_dir, adir = setup
    eng = Engine(model_id=str(model_dir), adapters_dir=str(adir), progress=False, max_loaded_adapters=1)
    eng.initialize()
    try:
        assert eng.family_options == {}  # not mistaken for a plugin option
        eng.load_adapter("math")
        eng.load_adapter("code")
        assert eng.get_model_info()["adapters_loaded"] == ["code"]
    finally:
        eng.cleanup()


def test_byte_budget(engine):
    one = engine.validate_adapter("math")  # noqa: F841 - validation alone loads nothing
    assert engine.get_model_info()["adapters_loaded"] == []
    engine.load_adapter("math")
    size = engine.adapters.info("math").tensor_bytes
    engine.configure_adapters(max_adapter_bytes=int(size * 1.5))
    engine.load_adapter("code")
    assert engine.get_model_info()["adapters_loaded"] == ["code"]


def test_threads_with_different_adapters(engine):
    for n in ("math", "code", "chat"):
        engine.load_adapter(n, activate=False)
    cases = [(PROMPTS[i % 4], a) for i, a in enumerate(["math", "code", "chat", None] * 2)]
    alone = {c: engine.generate_detailed(c[0], adapter=c[1], **GREEDY).token_ids for c in set(cases)}
    results, errors = {}, []

    def work(i, case):
        try:
            results[i] = engine.generate_detailed(case[0], adapter=case[1], **GREEDY).token_ids
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[i] == alone[c] for i, c in enumerate(cases))
    assert engine.active_adapter is None  # per-call adapters leave the active state as it was


def test_merge_gives_same_tokens_and_exact_unmerge(engine):
    base_logits = _logits(engine, PROMPTS[0], None)
    engine.load_adapter("math")
    unmerged = engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids
    unmerged_logits = _logits(engine, PROMPTS[0], "active")
    engine.merge_adapter()
    assert engine.get_model_info()["merged"] == ["math"]
    assert engine.adapters.generation_model() is engine.model  # merged: the LoRA wrappers are out of the forward path
    assert engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids == unmerged
    assert torch.allclose(_logits(engine, PROMPTS[0], "active"), unmerged_logits, atol=1e-4)
    # a per-call base request unmerges: exact base
    assert torch.equal(_logits(engine, PROMPTS[0], None), base_logits)
    engine.configure_adapters(merge=True)
    engine.load_adapter("code")
    assert engine.get_model_info()["merged"] == ["code"]
    # a mixed batch while "code" is merged: unmerged first, rows as alone
    batch = engine.generate_batch_detailed(PROMPTS[:2], adapters=["math", None], **GREEDY)
    assert batch[1].token_ids == engine.generate_detailed(PROMPTS[1], adapter=None, **GREEDY).token_ids
    assert batch[0].token_ids == engine.generate_detailed(PROMPTS[0], adapter="math", **GREEDY).token_ids
    engine.switch_adapter("code")
    assert engine.get_model_info()["merged"] == ["code"]
    engine.switch_adapter(None)
    assert engine.get_model_info()["merged"] == []
    assert torch.equal(_logits(engine, PROMPTS[0], "active"), base_logits)


def test_failed_load_leaves_engine_unchanged(engine, setup, tmp_path, monkeypatch):
    import shutil

    from adaptrix.errors import AdapterError, AdapterFormatError

    engine.load_adapter("math")
    before = _logits(engine, PROMPTS[0], "active")
    bad = tmp_path / "bad"
    shutil.copytree(setup[1] / "code", bad)
    (bad / "adapter_model.safetensors").write_bytes((bad / "adapter_model.safetensors").read_bytes()[:200])
    with pytest.raises(AdapterError):
        engine.load_adapter(str(bad))
    assert engine.active_adapter == "math" and engine.get_model_info()["adapters_loaded"] == ["math"]
    assert torch.equal(_logits(engine, PROMPTS[0], "active"), before)
    # first adapter failing inside peft itself: the base model gets its layers back
    engine.unload_adapter("math")
    base = _logits(engine, PROMPTS[0], None)
    import peft.peft_model

    def broken(*args, **kwargs):  # fails after peft has already wrapped the layers
        raise RuntimeError("disk went away")

    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", broken)
    with pytest.raises(AdapterError, match="peft failed to load .*disk went away.*unchanged"):
        engine.load_adapter("code")
    m = engine.adapters
    assert m.peft is None and engine.adapters.generation_model() is engine.model
    assert not any("lora" in type(x).__module__ for x in engine.model.modules())
    assert torch.equal(_logits(engine, PROMPTS[0], None), base)
    monkeypatch.undo()
    engine.load_adapter("math")
    # later adapters: adaptrix's direct injection (or peft's loader) fails after three layers got the adapter,
    # one of them newly wrapped (chat targets gate_proj, math does not)
    from peft.tuners.lora.layer import LoraLayer

    original, calls = LoraLayer.update_layer, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "update_layer", flaky)
    with pytest.raises(AdapterError, match="disk went away"):
        engine.load_adapter("chat")  # new target modules (gate/down) were injected, then removed
    monkeypatch.undo()
    assert engine.get_model_info()["adapters_loaded"] == ["math"]
    assert torch.equal(_logits(engine, PROMPTS[0], "active"), before)
    with pytest.raises(AdapterFormatError, match="truncated"):
        engine.load_adapter(str(bad))
    report = engine.validate_adapter(str(bad))
    assert not report.ok and "truncated" in report.errors[0]


# -- unload and eviction keep the engine working (issue 8) ----------------------------------------


def test_unloading_an_adapter_keeps_every_call_working(engine, setup):
    """Unloading the first-loaded adapter while the base is active used to leave peft pointing at it:
    every later generate, stream and batch failed with KeyError."""
    model_dir, adir = setup
    engine.load_adapter("math")
    engine.load_adapter("code")
    engine.switch_adapter(None)
    engine.unload_adapter("math")
    base = _oracle_tokens(engine, _oracle(model_dir, {}), PROMPTS[0])
    assert list(engine.generate_detailed(PROMPTS[0], **GREEDY).token_ids) == base[: len(base)]
    code = _oracle_tokens(engine, _oracle(model_dir, {"code": adir / "code"}), PROMPTS[0])
    got = engine.generate_detailed(PROMPTS[0], adapter="code", **GREEDY)
    assert list(got.token_ids) == code[: len(got.token_ids)]
    assert "".join(engine.stream(PROMPTS[0], adapter="code", **GREEDY)) == got.text
    rows = engine.generate_batch_detailed(PROMPTS[:2], adapters=["code", None], **GREEDY)
    assert rows[0].token_ids == got.token_ids


def test_lru_eviction_with_a_budget_of_one(setup):
    from adaptrix import Engine

    model_dir, adir = setup
    eng = Engine(str(model_dir), adapters_dir=str(adir), progress=False, max_loaded_adapters=1)
    eng.initialize()
    try:
        for name in ("math", "code", "math", "chat"):
            got = eng.generate_detailed(PROMPTS[1], adapter=name, **GREEDY).token_ids
            want = _oracle_tokens(eng, _oracle(model_dir, {name: adir / name}), PROMPTS[1])
            assert list(got) == want[: len(got)], name
            assert eng.get_model_info()["adapters_loaded"] == [name]
    finally:
        eng.cleanup()


def _expected_tokens(engine, model_dir, adir, active, composed, prompt, cache):
    """Plain peft on a freshly loaded base: the tokens for ``active`` (names; composed ones by recipe)."""
    key = (prompt, active, tuple(sorted((n, tuple(sorted(composed[n].items()))) for n in active if n in composed)))
    if key not in cache:
        real = sorted({n for n in active if n not in composed} | {s for n in active if n in composed for s in composed[n]})
        pm = _oracle(model_dir, {n: adir / n for n in real})
        if real:
            for n in active:
                if n in composed:
                    pm.add_weighted_adapter(list(composed[n]), list(composed[n].values()), n, combination_type="cat")
            if active:
                pm.base_model.set_adapter(list(active))
            else:
                pm.base_model.disable_adapter_layers()
        cache[key] = _oracle_tokens(engine, pm, prompt)
    return cache[key]


@pytest.mark.parametrize("seed", [0, 1])
def test_random_adapter_sequences_match_a_fresh_peft_model(setup, seed, one_thread):
    """Random load/switch/batch/compose/unload steps under a residency budget of 2 (so evictions happen):
    after every step the next generate equals plain peft on a fresh base with the same adapters active."""
    import random

    from adaptrix import Engine

    model_dir, adir = setup
    rng = random.Random(seed)
    real = ["math", "code", "chat", "wide"]
    eng = Engine(str(model_dir), adapters_dir=str(adir), progress=False, max_loaded_adapters=2)
    eng.initialize()
    composed: dict[str, dict[str, float]] = {}
    active: tuple[str, ...] = ()
    cache: dict = {}
    log = []
    try:
        for step in range(24):
            op = rng.choice(["load", "switch", "switch", "unload", "batch", "compose", "call"])
            resident = [r["name"] for r in eng.list_adapters() if r["state"] in ("loaded", "evicted")]
            if op == "load":
                name, activate = rng.choice(real), rng.random() < 0.5
                eng.load_adapter(name, activate=activate)
                active = (name,) if activate else active
            elif op == "switch":
                pick = rng.choice([None, "one", "two", "composed"])
                if pick == "one":
                    target = (rng.choice(real),)
                elif pick == "two":
                    target = tuple(rng.sample(real, 2))
                elif pick == "composed" and composed:
                    target = (rng.choice(sorted(composed)),)
                else:
                    target = ()
                eng.switch_adapter(list(target) if len(target) > 1 else (target[0] if target else None))
                active = target
            elif op == "unload" and resident:
                name = rng.choice(resident)
                eng.unload_adapter(name)
                composed.pop(name, None)
                active = tuple(a for a in active if a != name)
            elif op == "batch":
                rows = [rng.choice([None, *real]) for _ in range(3)]
                got = eng.generate_batch_detailed(PROMPTS[:3], adapters=rows, **GREEDY)
                for prompt, row, r in zip(PROMPTS, rows, got):
                    want = _expected_tokens(eng, model_dir, adir, (row,) if row else (), {}, prompt, cache)
                    assert list(r.token_ids) == want[: len(r.token_ids)], (log, op, row)
            elif op == "compose":
                a, b = rng.sample(real, 2)
                name = f"mix{step}"
                recipe = {a: 0.6, b: 0.4}
                activate = rng.random() < 0.5
                eng.compose_adapters(recipe, name=name, method="cat", activate=activate)
                composed[name] = recipe
                active = (name,) if activate else active
            elif op == "call":
                name = rng.choice([None, *real])
                got = eng.generate_detailed(PROMPTS[2], adapter=name, **GREEDY).token_ids
                want = _expected_tokens(eng, model_dir, adir, (name,) if name else (), {}, PROMPTS[2], cache)
                assert list(got) == want[: len(got)], (log, op, name)
            log.append((op, active))
            shown = eng.active_adapter
            assert (() if shown is None else (shown,) if isinstance(shown, str) else shown) == active, log
            assert len(eng.get_model_info()["adapters_loaded"]) <= max(2, len(active) + len(composed)), log
            got = eng.generate_detailed(PROMPTS[0], **GREEDY).token_ids
            want = _expected_tokens(eng, model_dir, adir, active, composed, PROMPTS[0], cache)
            assert list(got) == want[: len(got)], log
    finally:
        eng.cleanup()


# -- streams and threads (issue 8) -------------------------------------------------------------------


def _in_thread(fn, timeout=60):
    out, errors = [], []
    t = threading.Thread(target=lambda: _capture(fn, out, errors), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call never returned: the engine stayed locked"
    if errors:
        raise errors[0]
    return out[0]


def _capture(fn, out, errors):
    try:
        out.append(fn())
    except BaseException as exc:  # pragma: no cover - re-raised by _in_thread
        errors.append(exc)


def test_a_stream_consumed_from_a_thread_pool_leaves_the_engine_usable(engine):
    """Starlette's iterate_in_threadpool calls next() from whichever worker is free."""
    from concurrent.futures import ThreadPoolExecutor

    engine.load_adapter("math", activate=False)
    settings = dict(GREEDY, max_new_tokens=12)
    alone = engine.generate(PROMPTS[0], adapter="math", **settings)
    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    it = engine.stream(PROMPTS[0], adapter="math", **settings)
    pieces, i = [], 0
    while True:
        try:  # two threads, alternately; the first piece in one, the end in the other
            pieces.append(pools[min(i, 1 + i % 2) % 2].submit(next, it).result(timeout=60))
        except StopIteration:
            break
        i += 1
    assert i >= 2 and "".join(pieces) == alone
    assert _in_thread(lambda: engine.generate(PROMPTS[0], adapter="math", **settings)) == alone
    for pool in pools:
        pool.shutdown()


@pytest.mark.parametrize("end", ["close", "drop"])
def test_an_abandoned_stream_frees_the_engine(engine, end):
    import gc

    engine.load_adapter("math", activate=False)
    alone = engine.generate(PROMPTS[1], adapter="code", **GREEDY)
    from concurrent.futures import ThreadPoolExecutor

    it = engine.stream(PROMPTS[1], adapter="math", **dict(GREEDY, max_new_tokens=200))
    with ThreadPoolExecutor(1) as first, ThreadPoolExecutor(1) as second:
        first.submit(next, it).result(timeout=60)
        if end == "close":
            second.submit(it.close).result(timeout=60)  # closed by another thread than the one that started it
        else:
            del it
            second.submit(gc.collect).result(timeout=60)
    assert _in_thread(lambda: engine.generate(PROMPTS[1], adapter="code", **GREEDY)) == alone
    assert engine.active_adapter is None


def test_a_call_during_a_stream_does_not_change_the_streams_adapter(engine):
    engine.load_adapter("math", activate=False)
    engine.load_adapter("code", activate=False)
    settings = dict(GREEDY, max_new_tokens=12)
    math_text = engine.generate(PROMPTS[0], adapter="math", **settings)
    code_text = engine.generate(PROMPTS[0], adapter="code", **settings)
    assert math_text != code_text
    # the same thread, stream still open: the call waits for the stream's generation, then runs
    it = engine.stream(PROMPTS[0], adapter="math", **settings)
    first = next(it)
    assert engine.generate(PROMPTS[0], adapter="code", **settings) == code_text
    assert first + "".join(it) == math_text
    # another thread meanwhile: same answers
    it = engine.stream(PROMPTS[0], adapter="math", **settings)
    first = next(it)
    other = threading.Thread(target=lambda: results.append(engine.generate(PROMPTS[0], adapter="code", **settings)))
    results: list[str] = []
    other.start()
    rest = "".join(it)
    other.join(60)
    assert first + rest == math_text and results == [code_text]
    assert engine.active_adapter is None


# -- peft internals (issue 8) ----------------------------------------------------------------------


def test_installed_peft_is_one_peft_compat_was_checked_against():
    """adaptrix.adapters.peft_compat touches peft privates; a peft release nobody read it against must fail here
    first, not as a KeyError in a user's generate."""
    from adaptrix.adapters import peft_compat

    assert peft.__version__ in peft_compat.CHECKED_PEFT_VERSIONS, (
        f"peft {peft.__version__} is installed but adaptrix.adapters.peft_compat was checked against "
        f"{', '.join(peft_compat.CHECKED_PEFT_VERSIONS)} only: read it against this release, run the adapter "
        "tests, then add the version"
    )


def test_peft_privates_live_in_peft_compat_only():
    import re
    from pathlib import Path

    import adaptrix

    root = Path(adaptrix.__file__).parent
    private = re.compile(r"_enable_peft_forward_hooks|_create_and_replace|_prepare_adapter_config|"
                         r"_check_new_adapter_config|_check_target_module_compatiblity|\[\"_active_adapter\"\]|"
                         r"targeted_module_names")
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if p.name != "peft_compat.py" and private.search(p.read_text()))
    assert users == []
