"""Engine against an oracle: raw transformers ``model.generate`` on the same prompt ids.

Every family's tiny random model goes through the same engine calls; greedy
output must be token-for-token what transformers produces directly.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from adaptrix import Engine, ModularAdaptrixEngine
from adaptrix.errors import ContextOverflowError, EngineStateError, GenerationError

ALL_TYPES = [
    "qwen2", "qwen3", "qwen3_moe", "phi", "phi3", "llama", "mistral", "mixtral",
    "gemma", "gemma2", "gemma3_text", "deepseek_v3", "stablelm",
]
PROMPTS = ["What is machine learning?", "The capital of France is", "def add(a, b):"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine_of(tiny_model):
    engines: dict[str, Engine] = {}

    def get(model_type: str) -> Engine:
        if model_type not in engines:
            engines[model_type] = Engine(str(tiny_model(model_type)), progress=False)
            engines[model_type].initialize()
        return engines[model_type]

    yield get
    for e in engines.values():
        e.cleanup()


@pytest.fixture
def llama(engine_of):
    e = engine_of("llama")
    yield e
    e.reset_context()
    e.use_context_by_default = False


def oracle_ids(engine: Engine, prompt: str, max_new_tokens: int, **extra) -> list[int]:
    """Build the prompt ourselves and call transformers directly."""
    import torch

    loaded = engine.runner.loaded
    tok = loaded.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
        **loaded.chat_template_kwargs,
    )
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens, **extra
        )
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_greedy_matches_raw_transformers(engine_of, model_type):
    engine = engine_of(model_type)
    rp = engine.resolve_settings(temperature=0).repetition_penalty
    extra = {"repetition_penalty": rp} if rp != 1.0 else {}  # a family default (qwen) applies to both
    for prompt in PROMPTS[:2]:
        result = engine.generate_detailed(prompt, temperature=0, max_new_tokens=12)
        expected = oracle_ids(engine, prompt, 12, **extra)
        assert list(result.token_ids) == expected, (model_type, prompt)
        assert result.text == engine.tokenizer.decode(expected, skip_special_tokens=True).strip()


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_batch_equals_alone(engine_of, model_type):
    engine = engine_of(model_type)
    prompts = PROMPTS + ["Hi"]
    alone = [engine.generate_detailed(p, temperature=0, max_new_tokens=10) for p in prompts]
    batch = engine.generate_batch_detailed(prompts, temperature=0, max_new_tokens=10)
    assert [list(r.token_ids) for r in batch] == [list(r.token_ids) for r in alone], model_type
    assert engine.generate_batch(prompts, temperature=0, max_new_tokens=10) == [r.text for r in alone]


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "phi3"])
def test_stream_concatenation_equals_generate(engine_of, model_type):
    engine = engine_of(model_type)
    for prompt in PROMPTS:
        pieces = list(engine.stream(prompt, temperature=0, max_new_tokens=16))
        assert "".join(pieces) == engine.generate(prompt, temperature=0, max_new_tokens=16)
        assert len(pieces) >= 1


def test_stream_yields_pieces_while_generating(llama):
    it = llama.stream("What is machine learning?", temperature=0, max_new_tokens=30)
    first = next(it)
    assert first  # something arrived before the whole answer
    rest = "".join(it)
    assert first + rest == llama.generate("What is machine learning?", temperature=0, max_new_tokens=30)


def test_stream_closed_early_releases_lock(llama):
    it = llama.stream("What is machine learning?", temperature=0, max_new_tokens=40)
    next(it)
    it.close()
    # the lock is free again: another thread can generate
    done = []
    t = threading.Thread(target=lambda: done.append(llama.generate("Hi", temperature=0, max_new_tokens=3)))
    t.start()
    t.join(timeout=60)
    assert done


def test_stop_string_cuts_and_stops(llama):
    full = llama.generate_detailed("What is machine learning?", temperature=0, max_new_tokens=40)
    words = full.text.split()
    assert len(words) >= 4, full.text
    stop = words[len(words) // 2]
    cut = llama.generate_detailed("What is machine learning?", temperature=0, max_new_tokens=40, stop=[stop])
    assert stop not in cut.text
    assert cut.text == full.text[: full.text.index(stop)].strip()
    assert cut.finish_reason == "stop"
    assert len(cut.token_ids) < len(full.token_ids)  # generation really stopped early
    streamed = "".join(llama.stream("What is machine learning?", temperature=0, max_new_tokens=40, stop=stop))
    assert streamed == cut.text


def test_stop_strings_in_batch(llama):
    prompts = ["What is machine learning?", "The capital of France is"]
    full = llama.generate_batch(prompts, temperature=0, max_new_tokens=30)
    stop = full[0].split()[2]
    cut = llama.generate_batch(prompts, temperature=0, max_new_tokens=30, stop=stop)
    for f, c in zip(full, cut):
        assert stop not in c
        assert c == (f[: f.index(stop)].strip() if stop in f else f)


def test_settings_precedence(llama):
    # llama family default: temperature 0.6, top_p 0.9; code preset: 0.3 / 0.95; global: repetition_penalty 1.0
    assert llama.resolve_settings().temperature == 0.6
    assert llama.resolve_settings().top_p == 0.9
    assert llama.resolve_settings().repetition_penalty == 1.0
    code = llama.resolve_settings(task_type="code")
    assert (code.temperature, code.top_p) == (0.3, 0.95)
    assert llama.resolve_settings(task_type="math").temperature == 0.1
    assert llama.resolve_settings(task_type="creative").temperature == 0.9
    assert llama.resolve_settings(task_type="chat").temperature == 0.6
    explicit = llama.resolve_settings(task_type="code", temperature=0.5)
    assert (explicit.temperature, explicit.top_p) == (0.5, 0.95)


def test_settings_reach_model_generate(llama, monkeypatch):
    seen = []
    model = llama.model
    original = model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    llama.generate("Hi", task_type="code", max_new_tokens=3, seed=1)
    assert seen[-1]["do_sample"] is True
    assert (seen[-1]["temperature"], seen[-1]["top_p"], seen[-1]["max_new_tokens"]) == (0.3, 0.95, 3)
    llama.generate("Hi", task_type="code", temperature=0, max_length=4)
    assert seen[-1]["do_sample"] is False and seen[-1]["max_new_tokens"] == 4
    assert seen[-1]["temperature"] == 1.0 and seen[-1]["top_p"] == 1.0  # neutral: nothing to warn about
    llama.generate("Hi", max_new_tokens=2)
    assert seen[-1]["temperature"] == 0.6 and seen[-1]["do_sample"] is True


def test_greedy_is_deterministic_and_warning_free(llama, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        a = llama.generate("What is machine learning?", temperature=0, max_new_tokens=10)
        b = llama.generate("What is machine learning?", temperature=0, max_new_tokens=10)
    assert a == b
    assert not [r for r in caplog.records if "sampl" in r.getMessage() or "temperature" in r.getMessage()]


def test_seed_reproducible_sampling(llama):
    import torch

    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=20)
    before = torch.random.get_rng_state()
    a = llama.generate("What is machine learning?", seed=123, **kw)
    b = llama.generate("What is machine learning?", seed=123, **kw)
    assert a == b
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone
    others = {llama.generate("What is machine learning?", seed=s, **kw) for s in (1, 2, 3, 4)}
    assert len(others | {a}) > 1
    assert "".join(llama.stream("What is machine learning?", seed=123, **kw)) == a


def test_context_remembered(llama):
    llama.use_context_by_default = True
    first = llama.generate("My name is Alice", temperature=0, max_new_tokens=5)
    r = llama.generate_detailed("What's my name?", temperature=0, max_new_tokens=5)
    history = llama.get_history()
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == "My name is Alice" and history[1]["content"] == first
    alone = llama.generate_detailed("What's my name?", temperature=0, max_new_tokens=5, use_context=False)
    assert r.prompt_tokens > alone.prompt_tokens  # the first turn was in the prompt
    llama.reset_context()
    assert llama.get_history() == []


def test_context_trimmed_oldest_first(llama):
    conv = llama.conversations.get("long")
    for i in range(12):
        conv.add_turn(f"turn {i} " + "the capital of France is Paris " * 3, f"answer {i}")
    r = llama.generate_detailed("What is 25 times 8?", conversation="long", temperature=0, max_new_tokens=100)
    assert r.trimmed_turns > 0
    assert r.prompt_tokens <= 256 - 100  # tiny models have a 256-token context
    # the stored history keeps every turn; only the prompt was trimmed
    assert len(llama.get_history("long")) == 26
    # the current prompt alone too long: a clear error, and the engine goes on
    with pytest.raises(ContextOverflowError, match=r"tokens.*context.*256"):
        llama.generate("the capital of France is Paris " * 60, temperature=0, max_new_tokens=10)
    after = llama.generate_detailed("Hi", temperature=0, max_new_tokens=2)
    assert list(after.token_ids) == oracle_ids(llama, "Hi", 2)  # the engine goes on, answering right


def test_without_max_new_tokens_a_long_prompt_gets_what_fits(llama):
    """The default max_new_tokens (128: half the context of 256) is capped at what the prompt leaves; the
    error names max_new_tokens only when the caller gave one (the server used to answer 400 'max_tokens=128
    leaves room for ...' to a client that never sent max_tokens)."""
    ctx = llama.get_model_info()["context_length"]
    default = llama.resolve_settings(temperature=0).max_new_tokens
    assert default == ctx // 2
    prompt = next(p for p in ("the cat sat on the mat " * n for n in range(1, 200))
                  if ctx - default < len(llama.prepare_request(p, max_new_tokens=1).input_ids) < ctx - 8)
    result = llama.generate_detailed(prompt, temperature=0)
    assert result.settings.max_new_tokens == ctx - result.prompt_tokens < default
    assert result.token_ids == llama.generate_detailed(prompt, temperature=0,
                                                       max_new_tokens=ctx - result.prompt_tokens).token_ids
    # history is dropped before the answer shrinks
    llama.generate("Hi", conversation="long", temperature=0, max_new_tokens=2)
    kept = llama.generate_detailed(prompt, conversation="long", temperature=0)
    assert kept.trimmed_turns == 1 and kept.prompt_tokens == result.prompt_tokens
    with pytest.raises(ContextOverflowError, match=r"max_new_tokens=200 leaves room for 56"):
        llama.generate(prompt, temperature=0, max_new_tokens=200)
    with pytest.raises(ContextOverflowError) as alone:
        llama.generate("the cat sat on the mat " * 200, temperature=0)
    assert "max_new_tokens" not in str(alone.value) and "no room for an answer" in str(alone.value)


def test_stream_detailed_reports_what_generate_detailed_does(llama):
    """The engine's stream with a result: the same text, token ids, counts and finish reason as
    generate_detailed (a server streaming one request at a time reports its usage from it)."""
    for prompt, max_new, stop in [(PROMPTS[0], 3, None), (PROMPTS[1], 12, None), (PROMPTS[2], 12, [" "])]:
        kw = dict(temperature=0, max_new_tokens=max_new, stop=stop)
        want = llama.generate_detailed(prompt, **kw)
        stream = llama.stream_detailed(prompt, **kw)
        assert stream.result is None
        assert "".join(stream) == want.text
        assert stream.result == want
    early = llama.stream_detailed(PROMPTS[0], temperature=0, max_new_tokens=12)
    next(early)
    early.close()
    assert early.result is None
    assert llama.generate(PROMPTS[0], temperature=0, max_new_tokens=3)  # the model is free again


def test_named_conversations(llama):
    llama.generate("My name is Alice", conversation="a", temperature=0, max_new_tokens=3)
    llama.generate("My name is Bob", conversation="b", temperature=0, max_new_tokens=3)
    llama.generate("What's my name?", conversation="a", temperature=0, max_new_tokens=3)
    a, b = llama.get_history("a"), llama.get_history("b")
    assert len(a) == 4 and len(b) == 2
    assert a[0]["content"] == "My name is Alice" and b[0]["content"] == "My name is Bob"
    assert llama.get_history() == []  # the default conversation is untouched
    llama.reset_context(conversation="a")
    assert llama.get_history("a") == [] and len(llama.get_history("b")) == 2
    llama.reset_context()
    assert llama.get_history("b") == []


def test_system_prompt_kept_in_conversation(llama):
    with_sys = llama.generate_detailed("Hi", system="You are terse.", conversation="s", temperature=0, max_new_tokens=2)
    again = llama.generate_detailed("Hi", conversation="s", temperature=0, max_new_tokens=2)
    plain = llama.generate_detailed("Hi", temperature=0, max_new_tokens=2)
    assert with_sys.prompt_tokens > plain.prompt_tokens
    assert again.prompt_tokens > with_sys.prompt_tokens


def test_plain_fallback_without_chat_template(tiny_model):
    import torch

    engine = Engine(str(tiny_model("mistral")), progress=False)
    engine.initialize()
    try:
        tok = engine.tokenizer
        tok.chat_template = None
        r = engine.generate_detailed("What is machine learning?", temperature=0, max_new_tokens=12)
        text = "User: What is machine learning?\nAssistant:"
        ids = torch.tensor([tok(text)["input_ids"]])
        out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert r.text == expected.split("\nUser:")[0].strip()
        assert r.prompt_tokens == ids.shape[1]
    finally:
        engine.cleanup()


def test_bad_generation_input_keeps_engine_usable(llama):
    good = llama.generate("Hi", temperature=0, max_new_tokens=3)
    cases = [
        (dict(prompt=""), GenerationError, "empty"),
        (dict(prompt="   \n"), GenerationError, "empty"),
        (dict(prompt=None), GenerationError, "string"),
        (dict(prompt="Hi", temperature=-0.5), GenerationError, "temperature must be >= 0"),
        (dict(prompt="Hi", top_p=0), GenerationError, r"top_p must be in \(0, 1\]"),
        (dict(prompt="Hi", top_p=1.5), GenerationError, r"top_p must be in \(0, 1\], got 1.5"),
        (dict(prompt="Hi", max_new_tokens=0), GenerationError, "max_new_tokens must be a positive"),
        (dict(prompt="Hi", max_new_tokens=10_000), GenerationError, "does not fit in the context"),
        (dict(prompt="Hi", max_length=5, max_new_tokens=6), GenerationError, "disagree"),
        (dict(prompt="Hi", task_type="poetry"), GenerationError, "unknown task_type 'poetry'"),
        (dict(prompt="Hi", temprature=0.1), GenerationError, "unknown generation argument"),
        (dict(prompt="Hi", stop=[""]), GenerationError, "stop strings"),
    ]
    for kwargs, exc, message in cases:
        prompt = kwargs.pop("prompt")
        with pytest.raises(exc, match=message):
            llama.generate(prompt, **kwargs)
        with pytest.raises(exc, match=message):
            list(llama.stream(prompt, **kwargs))
    with pytest.raises(GenerationError, match=r"prompts\[1\] is empty"):
        llama.generate_batch(["Hi", ""])
    assert llama.generate("Hi", temperature=0, max_new_tokens=3) == good


def test_state_errors(tiny_model):
    engine = Engine(str(tiny_model("llama")), progress=False)
    with pytest.raises(EngineStateError, match="initialize"):
        engine.generate("Hi")
    with pytest.raises(EngineStateError, match="initialize"):
        engine.get_model_info()
    assert engine.initialize() is True  # the seed's API
    model = engine.model
    assert engine.initialize() is True and engine.model is model  # idempotent: nothing reloaded
    with engine as same:  # the context manager still gives the engine
        assert same is engine
    engine.initialize()
    text = engine.generate("Hi", temperature=0, max_new_tokens=3)
    engine.cleanup()
    with pytest.raises(EngineStateError):
        list(engine.stream("Hi"))
    engine.initialize()
    assert engine.generate("Hi", temperature=0, max_new_tokens=3) == text
    engine.cleanup()


def test_threads_share_an_engine_safely(llama):
    prompts = PROMPTS * 2
    expected = {p: llama.generate(p, temperature=0, max_new_tokens=8) for p in PROMPTS}
    got: dict[int, str] = {}

    def work(i, p):
        got[i] = llama.generate(p, temperature=0, max_new_tokens=8)

    threads = [threading.Thread(target=work, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == [expected[p] for p in prompts]


def test_model_info(engine_of):
    engine = engine_of("qwen3")
    info = engine.get_model_info()
    assert info["family"] == "qwen" and info["plugin"] == "qwen"
    assert info["model_type"] == "qwen3" and info["architecture"] == "Qwen3ForCausalLM"
    assert info["parameters"] == sum(p.numel() for p in engine.model.parameters()) > 0
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["context_length"] == 256
    assert info["generation_defaults"]["temperature"] == 0.7  # the qwen family's default
    assert info["chat_template_kwargs"] == {"enable_thinking": False}
    assert info["hidden_spans"] == [["<think>", "</think>"]]
    assert "adapters_loaded" in info and "active_adapter" in info


def test_family_override(tiny_model):
    engine = Engine(str(tiny_model("stablelm")), family="generic", progress=False)
    engine.initialize()
    try:
        assert engine.family == "generic"
    finally:
        engine.cleanup()


def test_public_names():
    assert ModularAdaptrixEngine is Engine
    code = "import sys, adaptrix; adaptrix.Engine; print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"model": "x"}, "did you mean 'model_id'"),  # used to load the embedded SmolLM2 instead
        ({"devcie": "cuda"}, "did you mean 'device'"),  # used to run on the CPU
        ({"enable_thinkng": True}, "did you mean 'enable_thinking'"),  # used to do nothing
    ],
)
def test_unknown_keyword_arguments_are_refused_at_construction(kwargs, hint):
    from adaptrix.errors import UnknownOptionError

    (name,) = kwargs
    with pytest.raises(UnknownOptionError, match=rf"unknown keyword argument\(s\) '{name}'\. '{name}': {hint}") as info:
        Engine(**kwargs)
    message = str(info.value)
    assert "Engine arguments are: adapters_dir, backend, device, dtype" in message
    assert "qwen: enable_thinking (" in message  # the installed plugins' family options, described
    assert isinstance(info.value, TypeError)  # what Python itself raises for a bad keyword


def test_family_options_come_from_the_plugins_and_fit_the_detected_family(tiny_model):
    from adaptrix.errors import UnknownOptionError
    from adaptrix.plugins.host import get_host

    host = get_host()
    options, plugin = host.call_family("family_options", "qwen")
    assert "enable_thinking" in options and plugin == "qwen"
    assert host.call_family("family_options", "llama") == ({}, "llama")  # the core default: no options
    llama = Engine(str(tiny_model("llama")), progress=False, enable_thinking=True)
    with pytest.raises(UnknownOptionError, match=r"'enable_thinking' do not apply.*family 'llama' takes family options: none"):
        llama.initialize()
    assert not llama.is_initialized
    qwen = Engine(str(tiny_model("qwen3")), progress=False, enable_thinking=True)
    assert qwen.initialize() is True
    try:
        assert qwen.get_model_info()["chat_template_kwargs"] == {"enable_thinking": True}
    finally:
        qwen.cleanup()
