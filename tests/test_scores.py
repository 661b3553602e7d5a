"""Scores and generation logprobs on the transformers backend, against raw transformers + peft.

The oracle: a PeftModel on the same tiny model and adapters, ``log_softmax`` of
the logits of one unpadded forward pass per sequence. Nothing of adaptrix.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

ITEMS = [("The capital of France", " is Paris"), ("def add(a, b):", " return a + b"), ("Hello", ", how are you?"),
         ("Machine learning is ", "fun")]
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory, one_thread):
    from support.adapters import make_adapter

    model_dir = tiny_model("qwen3")
    adir = tmp_path_factory.mktemp("adapters")
    make_adapter(model_dir, adir / "math", seed=1)
    make_adapter(model_dir, adir / "code", seed=2, target_modules=("q_proj", "v_proj", "down_proj"))
    return model_dir, adir


@pytest.fixture(scope="module")
def engine(setup):
    from support.adapters import open_engine

    yield from open_engine(*setup)


@pytest.fixture(scope="module")
def oracle(setup):
    """``oracle(ids, adapter) -> (len(ids), vocab)`` log-probabilities from raw peft (row i scores ids[i + 1])."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir, adir = setup
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model = PeftModel.from_pretrained(copy.deepcopy(base), adir / "math", adapter_name="math").eval()
    model.load_adapter(adir / "code", adapter_name="code")

    def logprobs(ids, adapter=None):
        with torch.no_grad():
            if adapter is None:
                logits = base(torch.tensor([list(ids)])).logits[0]
            else:
                model.set_adapter(adapter)
                logits = model(torch.tensor([list(ids)])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    return logprobs


def _lm_eval_split(tok, context, continuation):
    """lm-evaluation-harness's split (HFLM._encode_pair), written out here independently."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = tok(context + continuation)["input_ids"]
    ctx = tok(context)["input_ids"]
    return ctx, whole[len(ctx):]


def _check(score, ctx, cont, lp, top=0):
    assert score.context_tokens == len(ctx)
    assert [t.token_id for t in score.tokens] == cont
    ids = ctx + cont
    worst = 0.0
    for i, t in enumerate(score.tokens):
        row = lp[len(ctx) + i - 1]
        worst = max(worst, abs(t.logprob - row[ids[len(ctx) + i]].item()))
        assert t.greedy == (int(row.argmax()) == t.token_id)
        if top:
            values, alts = row.topk(top)
            assert [a for a, _, _ in t.top] == alts.tolist()
            assert max(abs(v - w) for (_, _, v), w in zip(t.top, values.tolist())) < TOL
    return worst


@pytest.mark.parametrize("adapters", [None, ["math"] * 4, ["math", None, "code", "math"]],
                         ids=["base", "adapter", "mixed"])
def test_score_batch_equals_raw_peft(engine, oracle, adapters):
    scores = engine.score_batch(ITEMS, adapters=adapters, top=3)
    worst = 0.0
    for i, ((context, continuation), score) in enumerate(zip(ITEMS, scores)):
        ctx, cont = _lm_eval_split(engine.tokenizer, context, continuation)
        worst = max(worst, _check(score, ctx, cont, oracle(ctx + cont, adapters and adapters[i]), top=3))
    assert worst < TOL
    assert scores[0].logprob == pytest.approx(sum(t.logprob for t in scores[0].tokens))


def test_score_with_an_adapter_differs_from_base_and_restores_the_active_one(engine, oracle):
    tok = engine.tokenizer
    ctx, cont = _lm_eval_split(tok, *ITEMS[0])
    engine.switch_adapter("code")
    try:
        with_math = engine.score(*ITEMS[0], adapter="math")
        assert engine.active_adapter == "code"
        active = engine.score(*ITEMS[0])
    finally:
        engine.switch_adapter(None)
    assert _check(with_math, ctx, cont, oracle(ctx + cont, "math")) < TOL
    assert _check(active, ctx, cont, oracle(ctx + cont, "code")) < TOL
    assert abs(with_math.logprob - engine.score(*ITEMS[0], adapter=None).logprob) > 0.1


def test_a_composition_scores_as_the_same_composition_loaded_by_name(engine):
    weights = {"math": 0.5, "code": 1.0}
    engine.compose_adapters(weights, name="mc", method="cat")
    try:
        named = engine.score(*ITEMS[1], adapter="mc")
        assert engine.score(*ITEMS[1], adapter=weights).logprob == pytest.approx(named.logprob, abs=TOL)
        batch = engine.score_batch([ITEMS[1], ITEMS[0]], adapters=[weights, None])
        assert batch[0].logprob == pytest.approx(named.logprob, abs=TOL)
    finally:
        engine.unload_adapter("mc")


def test_token_ids_and_empty_context(engine, oracle):
    tok = engine.tokenizer
    ids = tok("Hello world, how are you")["input_ids"]
    tokens = engine.token_logprobs(ids, start=0, top=2)
    assert tokens[0].logprob is None and tokens[0].token_id == ids[0]
    lp = oracle(ids)
    assert max(abs(t.logprob - lp[i, ids[i + 1]].item()) for i, t in enumerate(tokens[1:])) < TOL
    assert [t.token_id for t in engine.token_logprobs(ids, start=3)] == ids[3:]
    # ids in, ids out; an empty context scores from the model's BOS, or EOS when it has none (this one)
    by_ids = engine.score(ids[:2], ids[2:])
    assert [(t.token_id, t.logprob) for t in by_ids.tokens] == [(t.token_id, t.logprob) for t in tokens[2:]]
    empty = engine.score("", " is Paris")
    prefix = tok.eos_token_id if tok.bos_token_id is None else tok.bos_token_id
    cont = tok(" is Paris", add_special_tokens=False)["input_ids"]
    assert empty.context_tokens == 1
    assert _check(empty, [prefix], cont, oracle([prefix] + cont)) < TOL


def test_greedy_flag_is_true_for_the_greedy_continuation_only(engine):
    prompt = engine.tokenizer("The capital of France")["input_ids"]
    greedy = engine.generate_detailed("The capital of France", raw=True, max_new_tokens=5, temperature=0,
                                      repetition_penalty=1.0).token_ids
    assert engine.score(prompt, list(greedy)).greedy
    other = list(greedy[:-1]) + [(greedy[-1] + 1) % len(engine.tokenizer)]
    assert not engine.score(prompt, other).greedy


def test_generation_logprobs_are_the_raw_logits_of_what_was_generated(engine, oracle):
    tok = engine.tokenizer
    opts = dict(raw=True, max_new_tokens=6, temperature=0.8, seed=3, logprobs=4)
    for adapter in (None, "math"):
        result = engine.generate_detailed("Hello", adapter=adapter, **opts)
        ids = tok("Hello")["input_ids"] + list(result.token_ids)
        lp = oracle(ids, adapter)
        assert [t.token_id for t in result.logprobs] == list(result.token_ids)
        assert all(len(t.top) == 4 for t in result.logprobs)
        start = len(ids) - len(result.token_ids)
        assert max(abs(t.logprob - lp[start + i - 1, t.token_id].item()) for i, t in enumerate(result.logprobs)) < TOL
        stream = engine.stream_detailed("Hello", adapter=adapter, **opts)
        assert "".join(stream) == result.text
        assert stream.result.logprobs == result.logprobs
    plain = engine.generate_detailed("Hello", raw=True, max_new_tokens=3)
    assert plain.logprobs is None
    chosen = engine.generate_detailed("Hello", raw=True, max_new_tokens=3, logprobs=0).logprobs
    assert all(t.top == () for t in chosen)


def test_batched_generation_logprobs_equal_each_alone(engine):
    opts = dict(raw=True, max_new_tokens=4, temperature=0, repetition_penalty=1.0, logprobs=2)
    prompts, adapters = ["Hello", "def add(a, b):"], ["math", None]
    batch = engine.generate_batch_detailed(prompts, adapters=adapters, **opts)
    for prompt, adapter, got in zip(prompts, adapters, batch):
        alone = engine.generate_detailed(prompt, adapter=adapter, **opts)
        assert got.token_ids == alone.token_ids
        assert max(abs(a.logprob - b.logprob) for a, b in zip(got.logprobs, alone.logprobs)) < TOL


@pytest.mark.parametrize("call, message", [
    (lambda e: e.score("Hello", " world", top=21), "top must be a whole number from 0 to 20"),
    (lambda e: e.score("Hello", ""), "has no tokens"),
    (lambda e: e.score_batch([("Hello",)]), "items[0] must be a (context, continuation) pair"),
    (lambda e: e.score_batch(ITEMS, adapters=["math"]), "adapters has 1 entries for 4 items"),
    (lambda e: e.score_batch(ITEMS[:1], adapters=[3]), "adapters[0] must be an adapter name"),
    (lambda e: e.score_batch(ITEMS[:1], adapters=["nope"]), "nope"),
    (lambda e: e.token_logprobs([1, 2], start=3), "start must be a whole number from 0 to len(ids)=2"),
    (lambda e: e.generate("Hello", logprobs=21), "logprobs must be a whole number from 0 to 20"),
    (lambda e: e.generate("Hello", logprobs=True), "logprobs must be a whole number"),
])
def test_bad_requests_get_a_clear_error_and_change_nothing(engine, call, message):
    from adaptrix.errors import AdaptrixError

    before = engine.score(*ITEMS[0])
    with pytest.raises(AdaptrixError) as err:
        call(engine)
    assert message in str(err.value)
    assert engine.active_adapter is None
    assert engine.score(*ITEMS[0]) == before


def test_one_row_of_logits_scores_alike_from_torch_and_numpy():
    """``row_logprob`` (what step decoders call) gives the same TokenLogprob from a torch row or a numpy one."""
    from adaptrix.generation.scoring import row_logprob

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=gen) * 3
    piece = str
    want = torch.log_softmax(logits.double(), dim=-1)
    best = int(want.argmax())
    for row in (logits, logits.numpy()):
        got = row_logprob(row, 7, top=5, piece=piece)
        assert got.token_id == 7 and got.text == "7" and not got.greedy
        assert got.logprob == pytest.approx(float(want[7]), abs=1e-5)
        assert [a for a, _, _ in got.top] == want.topk(5).indices.tolist()
        assert row_logprob(row, best, piece=piece).greedy


def test_batches_are_longest_first_and_bounded():
    from adaptrix.generation.scoring import plan_batches

    lengths = [5, 300, 40, 41, 5000, 7]
    batches = plan_batches(lengths, max_rows=2, max_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [4]  # longer than the token budget: alone
    assert all(len(b) <= 2 and lengths[b[0]] * len(b) <= 1000 for b in batches[1:])
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
