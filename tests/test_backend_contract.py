"""One contract, every installed backend: the same tests on the embedded SmolLM2, per backend.

Each test runs once per backend (``transformers``, the reference, and
``llamacpp`` when installed) against that backend's session engine, so a
backend cannot drift from the engine's semantics: greedy decoding, streaming,
stop strings, seeds, presets, conversations, batches, adapters and what a
backend refuses. Oracles that are backend-specific (raw ``model.generate``,
raw llama-cpp-python) live beside them at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.real_weights

REPO = Path(__file__).resolve().parents[1]
MATH = REPO / "examples" / "adapters" / "math_specialist"
PIRATE = REPO / "examples" / "adapters" / "pirate_style"
QUESTION = "What is 25 times 8?"


def fresh(e):
    """Put a shared session engine in the state a new Engine has: base model, no adapter loaded, composed or
    evicted, no residency limit, no merging, no history. Whatever ran before (in this file or another, in any
    order, passed or failed) and whatever names its adapters had."""
    from adaptrix.errors import AdapterError

    pending = e.adapters.loaded_names()
    while pending:  # a composition refuses to lose its sources first (llama.cpp): unload it, then them
        refused = []
        for name in reversed(pending):
            try:
                e.unload_adapter(name)
            except AdapterError:
                refused.append(name)
        if len(refused) == len(pending):
            raise AssertionError(f"the shared engine keeps adapters {refused} loaded")
        pending = refused
    for row in e.list_adapters():
        if row["state"] == "evicted":
            e.unload_adapter(row["name"])  # forgotten: no transparent reload in the next test
    e.configure_adapters(merge=False)
    e.reset_context()
    e.use_context_by_default = False
    return e


@pytest.fixture(params=["transformers", "llamacpp"])
def engine(request):
    e = request.getfixturevalue("smollm2_engine" if request.param == "transformers" else "smollm2_llamacpp")
    yield fresh(e)
    fresh(e)  # and leave it so for the other files that share it


def test_info_names_the_backend_and_why(engine, request):
    info = engine.get_model_info()
    assert info["backend"] == request.node.callspec.params["engine"]
    assert info["backend_reason"] and info["family"] == "llama"
    assert 100e6 < info["parameters"] < 300e6


def test_greedy_is_deterministic_and_stream_equals_generate(engine):
    a = engine.generate_detailed(QUESTION, temperature=0, max_new_tokens=12)
    b = engine.generate_detailed(QUESTION, temperature=0, max_new_tokens=12)
    assert a.token_ids == b.token_ids and a.text
    pieces = list(engine.stream(QUESTION, temperature=0, max_new_tokens=12))
    assert len(pieces) > 1 and "".join(pieces) == a.text


def test_stop_strings_cut_the_text(engine):
    full = engine.generate(QUESTION, temperature=0, max_new_tokens=24)
    word = full.split()[2]
    cut = engine.generate_detailed(QUESTION, temperature=0, max_new_tokens=24, stop=[word])
    assert cut.finish_reason == "stop" and word not in cut.text and full.startswith(cut.text)


def test_seed_repeats_sampling(engine):
    one = engine.generate("Write a short poem.", temperature=1.0, top_p=1.0, max_new_tokens=16, seed=7)
    two = engine.generate("Write a short poem.", temperature=1.0, top_p=1.0, max_new_tokens=16, seed=7)
    others = {engine.generate("Write a short poem.", temperature=1.0, top_p=1.0, max_new_tokens=16, seed=s)
              for s in (1, 2, 3)}
    assert one == two and len(others | {one}) > 1


def test_task_presets_and_family_defaults_resolve_the_same(engine):
    from adaptrix.generation.defaults import TASK_PRESETS

    code = engine.resolve_settings(task_type="code")
    assert code.temperature == TASK_PRESETS["code"].temperature and code.max_new_tokens > 0
    assert engine.resolve_settings(temperature=0.5).temperature == 0.5


def test_conversation_history_reaches_the_prompt_and_trims(engine):
    engine.generate("My name is Alice.", use_context=True, max_new_tokens=4, temperature=0)
    assert engine.get_history()[0] == {"role": "user", "content": "My name is Alice."}
    prepared = engine.prepare_request("What is my name?", history=engine.get_history(), max_new_tokens=4)
    assert "My name is Alice." in prepared.prompt.text
    from adaptrix.errors import ContextOverflowError

    with pytest.raises(ContextOverflowError):
        engine.generate("word " * 9000, max_new_tokens=4)


def test_batch_rows_equal_each_prompt_alone(engine):
    prompts = [QUESTION, "Name a colour.", "What is the capital of Italy?"]
    batch = engine.generate_batch(prompts, temperature=0, max_new_tokens=10)
    assert batch == [engine.generate(p, temperature=0, max_new_tokens=10) for p in prompts]


def test_adapter_answers_and_switches_without_changing_the_base(engine):
    base = engine.generate(QUESTION, temperature=0, max_new_tokens=40)
    assert engine.load_adapter(str(MATH)) is True
    answer = engine.generate(QUESTION, temperature=0)
    assert "25 × 8 = 20 × 8 + 5 × 8" in answer and "The answer is" in answer
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=40, adapter=None) == base  # per call
    engine.switch_adapter(None)
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=40) == base
    assert engine.active_adapter is None
    engine.unload_adapter("math_specialist")
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=40) == base


def test_a_gguf_lora_file_loads_as_its_peft_folder_does(engine, tmp_path):
    """llama.cpp's own adapter files (and Ollama's) load on every backend: converted once, then as a folder."""
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix.adapters.convert import convert_adapter
    from adaptrix.plugins.host import get_host

    convert_adapter(MATH, tmp_path / "math.gguf", host=get_host())
    engine.load_adapter(str(MATH), activate=False)
    expected = engine.generate(QUESTION, adapter="math_specialist", temperature=0, max_new_tokens=24)
    engine.load_adapter(str(tmp_path / "math.gguf"), name="math_file", activate=False)
    assert engine.generate(QUESTION, adapter="math_file", temperature=0, max_new_tokens=24) == expected


def test_mixed_batch_rows_equal_each_row_alone(engine):
    engine.load_adapter(str(MATH), activate=False)
    engine.load_adapter(str(PIRATE), activate=False)
    prompts = [QUESTION, "Tell me about the sea.", QUESTION]
    adapters = ["math_specialist", "pirate_style", None]
    batch = engine.generate_batch(prompts, adapters=adapters, temperature=0, max_new_tokens=16)
    alone = [engine.generate(p, adapter=a, temperature=0, max_new_tokens=16) for p, a in zip(prompts, adapters)]
    assert batch == alone and batch[0] != batch[2]


def test_lru_residency_reloads_evicted_adapters(engine):
    engine.configure_adapters(max_loaded_adapters=1)
    first = engine.generate(QUESTION, adapter=str(MATH), temperature=0, max_new_tokens=12)
    engine.load_adapter(str(PIRATE), activate=False)
    assert engine.adapters.loaded_names() == ["pirate_style"]
    rows = {r["name"]: r["state"] for r in engine.list_adapters()}
    assert rows["math_specialist"] == "evicted"
    assert engine.generate(QUESTION, adapter="math_specialist", temperature=0, max_new_tokens=12) == first


def test_cat_composition_is_the_weighted_sum(engine):
    engine.load_adapter(str(MATH), activate=False)
    engine.compose_adapters({"math_specialist": 1.0}, "mix_one", method="cat")
    alone = engine.generate(QUESTION, adapter="math_specialist", temperature=0, max_new_tokens=20)
    assert engine.generate(QUESTION, adapter="mix_one", temperature=0, max_new_tokens=20) == alone


def test_compositions_leave_no_pins_behind(engine):
    """A composition holds its sources once each, whatever their weights (0 and negative included), and
    lets go when it is unloaded: the sources then unload, load and get evicted again (issue 15: llama.cpp
    added the weights as pin counts, so 0.1 + 0.2 - 0.1 - 0.2 left them pinned forever)."""
    from adaptrix.errors import AdapterError

    engine.load_adapter(str(MATH), activate=False)
    engine.load_adapter(str(PIRATE), activate=False)
    mixes = {"mix_a": {"math_specialist": 0.1, "pirate_style": 0.9},
             "mix_b": {"math_specialist": 0.2, "pirate_style": 0.8},
             "mix_c": {"math_specialist": 0.0, "pirate_style": -0.5}}
    for name, weights in mixes.items():
        engine.compose_adapters(weights, name, method="cat")
        assert engine.generate(QUESTION, adapter=name, temperature=0, max_new_tokens=4)
    pins = engine.adapters._pinned
    if engine.runner.backend == "llamacpp":  # its compositions are scales over their sources: they stay resident
        assert pins["math_specialist"] == pins["pirate_style"] == 3
        with pytest.raises(AdapterError, match="part of composition"):
            engine.unload_adapter("math_specialist")
    for name in mixes:  # as the server's forget_compositions does before a source is replaced
        engine.unload_adapter(name)
    assert pins["math_specialist"] == pins["pirate_style"] == 0
    engine.unload_adapter("math_specialist")
    engine.load_adapter(str(MATH), activate=False)
    engine.configure_adapters(max_loaded_adapters=1)  # LRU evicts the least recently used, now unpinned
    assert engine.adapters.loaded_names() == ["math_specialist"]
    assert {r["name"]: r["state"] for r in engine.list_adapters()}["pirate_style"] == "evicted"


def test_a_stream_owns_the_model_until_its_generation_ends(engine):
    """Whichever thread pulls a stream generates it (llama.cpp steps in the reader's thread); a call made
    meanwhile, in the reader's own thread or another, finishes the stream first and never changes it; a
    stream left unread or closed early frees the model."""
    from concurrent.futures import ThreadPoolExecutor

    engine.load_adapter(str(MATH), activate=False)
    settings = dict(temperature=0, max_new_tokens=16)
    math_text = engine.generate(QUESTION, adapter="math_specialist", **settings)
    base_text = engine.generate(QUESTION, **settings)
    assert math_text != base_text
    it = engine.stream(QUESTION, adapter="math_specialist", **settings)
    first = next(it)
    assert engine.generate(QUESTION, **settings) == base_text  # same thread: no deadlock, no change
    assert first + "".join(it) == math_text
    with ThreadPoolExecutor(1) as a, ThreadPoolExecutor(1) as b:
        it = engine.stream(QUESTION, adapter="math_specialist", **settings)
        pieces = [a.submit(next, it).result(timeout=60)]
        assert b.submit(engine.generate, QUESTION, **settings).result(timeout=60) == base_text
        pieces += a.submit(list, it).result(timeout=60)
        assert "".join(pieces) == math_text
        it = engine.stream(QUESTION, adapter="math_specialist", **dict(settings, max_new_tokens=200))
        a.submit(next, it).result(timeout=60)
        b.submit(it.close).result(timeout=60)  # closed by another thread than the reader
    assert engine.generate(QUESTION, **settings) == base_text and engine.active_adapter is None


def test_what_a_backend_cannot_do_is_refused_by_name(engine, request):
    from adaptrix.errors import AdapterError, BackendError

    if request.node.callspec.params["engine"] != "llamacpp":
        pytest.skip("the reference backend does every adapter operation")
    engine.load_adapter(str(MATH))
    with pytest.raises(BackendError, match="llamacpp backend cannot merge adapters"):
        engine.merge_adapter()
    with pytest.raises(BackendError, match="llamacpp backend cannot compose adapters with method 'linear'"):
        engine.compose_adapters({"math_specialist": 0.5}, "mix_lin", method="linear")
    with pytest.raises(AdapterError):  # nothing changed: the adapter still answers
        engine.unload_adapter("nope")
    assert "The answer is" in engine.generate(QUESTION, temperature=0)


# -- backend-specific oracles ---------------------------------------------------------------------


def test_llamacpp_greedy_equals_raw_llama_cpp_python(smollm2_llamacpp):
    from support.llamacpp import RawLlama

    e = fresh(smollm2_llamacpp)
    prepared = e.prepare_request(QUESTION, temperature=0, max_new_tokens=24, repetition_penalty=1.0)
    runtime = e.runner.runtime
    with RawLlama(runtime.path, n_ctx=runtime.n_ctx, threads=runtime.n_threads) as raw:
        expected = raw.greedy(list(prepared.input_ids), 24)
    got = e.generate_detailed(QUESTION, temperature=0, max_new_tokens=24, repetition_penalty=1.0)
    assert [t for t in got.token_ids if t not in e.runner.eos_ids] == expected


def test_threads_are_a_checked_engine_option(tmp_path):
    """`Engine(threads=N)` (CLI `--threads`): llama.cpp runs on N threads; a bad value is refused by name."""
    from adaptrix import Engine
    from adaptrix.errors import BackendError

    pytest.importorskip("llama_cpp")
    for bad in (0, -2, "2", True):
        with pytest.raises(BackendError, match="threads must be a positive whole number"):
            Engine(threads=bad)
    e = Engine(progress=False, backend="llamacpp", threads=1)
    e.initialize()
    try:
        assert e.get_model_info()["threads"] == 1
    finally:
        e.cleanup()
