"""The llama.cpp step decoder (``adaptrix serve``'s batching on llama.cpp) on the embedded SmolLM2.

Oracle: ``engine.generate`` of the same request alone (the single-sequence
path). Rows join at different steps, with different adapters, and leave early.
With ``batch_invariant=True`` every greedy row must get exactly the tokens and
text it gets alone, whatever the schedule; grouped (the default), rows of one
adapter share a ``llama_decode`` and may round differently (issue 15).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import schedules

pytestmark = pytest.mark.real_weights

REPO = Path(__file__).resolve().parents[1]
MATH = str(REPO / "examples" / "adapters" / "math_specialist")
PIRATE = str(REPO / "examples" / "adapters" / "pirate_style")
N = 24


@pytest.fixture
def engine(smollm2_llamacpp):
    """The shared llama.cpp engine on one thread (on a busy shared CPU two llama.cpp threads wait for each
    other: ~15x slower), left as found: its threads, one sequence, no adapters."""
    e = smollm2_llamacpp
    runtime = e.runner.runtime
    before, threads = runtime.n_seq_max, runtime._threads
    runtime.set_threads(1)
    yield e
    runtime.set_threads(*threads)
    runtime.set_max_sequences(before)
    for name in list(e.adapters.loaded_names()):
        e.unload_adapter(name)


def _alone(e, prompt, adapter):
    return e.generate_detailed(prompt, adapter=adapter, temperature=0, max_new_tokens=N)


def _add(e, d, key, prompt, adapter, texts):
    prepared = e.prepare_request(prompt, adapter=adapter, temperature=0, max_new_tokens=N)
    row, text = d.add(key, prepared, adapter)
    texts[key] = text
    return row


def _step(d, texts, done):
    for row, text in d.step():
        texts[row.key] += text
    for row in [r for r in d.rows if r.finish_reason]:
        texts[row.key] += d.tail(row)
        d.remove(row)
        done[row.key] = d.finish(row)


SCHEDULE_TOKENS = 32


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_batch_invariant_rows_equal_generate_alone_in_every_join_schedule(engine, name):
    """Issue 15: grouped, a math_specialist row's answer changed when a second one joined at step 5."""
    done = schedules.run(engine, schedules.SCHEDULES[name], tokens=SCHEDULE_TOKENS, batch_invariant=True)
    for i, (prompt, adapter) in enumerate((p, a) for _, p, a in schedules.SCHEDULES[name]):
        want = schedules.alone(engine, _ALONE, prompt, adapter, SCHEDULE_TOKENS)
        result, text = done[i]
        assert result.token_ids == want.token_ids, (name, i)
        assert result.text == text == want.text and result.finish_reason == want.finish_reason, (name, i)


def test_grouped_rows_of_one_adapter_can_round_differently_which_is_why_the_option_exists(engine):
    """The default groups rows of one adapter in one ``llama_decode``: llama.cpp multiplies a one-token batch
    by the float32 LoRA tensors with another kernel than a batch of two or more (gemv vs llamafile sgemm), and
    issue 15's schedule changes the first row's answer. If this starts failing, llama.cpp has become batch
    invariant here: say so in docs/serve.md and docs/backends.md."""
    schedule = schedules.SCHEDULES["same-adapter-join-at-5"]
    done = schedules.run(engine, schedule, tokens=SCHEDULE_TOKENS, batch_invariant=False)
    want = schedules.alone(engine, _ALONE, schedule[0][1], schedule[0][2], SCHEDULE_TOKENS)
    assert done[0][0].token_ids != want.token_ids


_ALONE: dict = {}


def test_rows_joining_at_different_steps_with_mixed_adapters_equal_generate_alone(engine):
    from adaptrix.errors import BatchFullError

    e = engine
    requests = {
        "base": ("What is 25 times 8?", None),
        "math": ("What is 25 times 8?", MATH),
        "pirate": ("Tell me about the sea.", PIRATE),
        "base2": ("Name three colors.", None),
        "math2": ("Name three colors.", MATH),
    }
    want = {k: _alone(e, p, a) for k, (p, a) in requests.items()}
    assert len({w.text for w in want.values()}) == len(want)  # the adapters change the answers

    d = e.step_decoder(max_rows=4)
    assert d is not None and e.runner.runtime.n_seq_max >= 5
    joins = {0: ["base", "math"], 2: ["pirate"], 5: ["base2"], 9: ["math2"]}
    texts, done, waiting = {}, {}, []
    step = 0
    try:
        while len(done) < len(requests):
            waiting += joins.get(step, [])
            while waiting:
                try:
                    _add(e, d, waiting[0], *requests[waiting[0]], texts)
                except BatchFullError:
                    assert len(d.rows) == 4
                    break
                waiting.pop(0)
            if step == 7:  # the engine's own path runs between steps and leaves the rows alone
                assert _alone(e, *requests["pirate"]).token_ids == want["pirate"].token_ids
            _step(d, texts, done)
            step += 1
            assert step < 10 * N
    finally:
        d.close()
    for key, result in done.items():
        assert result.token_ids == want[key].token_ids, key
        assert result.text == want[key].text == texts[key], key
        assert result.finish_reason == want[key].finish_reason, key
    # a context with several sequences leaves the single-sequence path's answers as they were
    assert _alone(e, *requests["math"]).token_ids == want["math"].token_ids


def test_a_cancelled_row_frees_its_sequence_for_the_next(engine):
    from adaptrix.errors import BatchFullError

    e = engine
    a = ("Write a poem about the moon.", PIRATE)
    b = ("What is 25 times 8?", MATH)
    c = ("Name three colors.", None)
    want_b, want_c = _alone(e, *b), _alone(e, *c)
    d = e.step_decoder(max_rows=2)
    texts, done = {}, {}
    runtime = e.runner.runtime
    try:
        row_a = _add(e, d, "a", *a, texts)
        _add(e, d, "b", *b, texts)
        with pytest.raises(BatchFullError, match="all 2 sequences"):
            _add(e, d, "c", *c, texts)
        for _ in range(3):
            _step(d, texts, done)
        assert runtime._ll.llama_memory_seq_pos_max(runtime._memory, row_a.seq) >= 0
        d.remove(row_a)  # the client went away
        assert runtime._ll.llama_memory_seq_pos_max(runtime._memory, row_a.seq) == -1  # its KV cells are free
        row_c = _add(e, d, "c", *c, texts)
        assert row_c.seq == row_a.seq
        while d.rows:
            _step(d, texts, done)
    finally:
        d.close()
    assert "a" not in done
    assert done["b"].token_ids == want_b.token_ids and texts["b"] == want_b.text
    assert done["c"].token_ids == want_c.token_ids and texts["c"] == want_c.text
    assert e.adapters._pinned["pirate_style"] == 0  # the cancelled row's adapter is no longer held



def test_generate_between_steps_uses_the_engines_own_adapters(engine):
    """A step leaves its last group's LoRA set on the context (resetting it costs a graph rebuild); a
    generate or stream in between must still run with the engine's active adapters, not the row's."""
    e = engine
    e.load_adapter(MATH, activate=False)
    question = "What is 25 times 8?"
    base, math = _alone(e, question, None), _alone(e, question, "math_specialist")
    assert base.text != math.text
    d = e.step_decoder(max_rows=2)
    texts: dict = {}
    _add(e, d, "math", question, "math_specialist", texts)
    _step(d, texts, {})
    assert e.generate_detailed(question, temperature=0, max_new_tokens=N).token_ids == base.token_ids
    assert "".join(e.stream(question, temperature=0, max_new_tokens=N)) == base.text
    _step(d, texts, {})
    e.switch_adapter("math_specialist")
    _step(d, texts, {})
    assert e.generate_detailed(question, temperature=0, max_new_tokens=N).token_ids == math.token_ids
    e.switch_adapter(None)
    d.close()


def test_the_runners_decoder_holds_the_lease_it_is_given_and_never_reaches_into_the_engine(engine, monkeypatch):
    """``LlamaCppRunner.step_decoder`` gets the model lease and nothing of the engine: it waits for that lease
    (not for a lock of its own finding), and with every attribute of every Engine made to fail, its rows
    still decode to ``generate``'s answers alone."""
    import threading

    from adaptrix import Engine
    from adaptrix.generation.lease import ModelLease
    from adaptrix.generation.steps import StepDecoder

    e = engine
    requests = {"base": ("Name three colors.", None), "math": ("What is 25 times 8?", MATH)}
    want = {k: _alone(e, p, a) for k, (p, a) in requests.items()}
    prepared = {k: e.prepare_request(p, adapter=a, temperature=0, max_new_tokens=N) for k, (p, a) in requests.items()}
    runner, lease = e.runner, ModelLease()
    held, free = threading.Event(), threading.Event()

    def hold():
        with lease:
            held.set()
            free.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    built: list = []
    builder = threading.Thread(target=lambda: built.append(runner.step_decoder(lease=lease, max_rows=2)))
    builder.start()
    builder.join(0.5)
    assert not built  # it waits for the lease it was given
    free.set()
    builder.join(30)
    holder.join(30)
    (d,) = built
    assert isinstance(d, StepDecoder)

    def reached(self, name):
        raise AssertionError(f"the step decoder reached into the engine: Engine.{name}")

    monkeypatch.setattr(Engine, "__getattribute__", reached)
    texts, done = {}, {}
    try:
        for key, (_, adapter) in requests.items():
            _, texts[key] = d.add(key, prepared[key], adapter)
        while d.rows:
            _step(d, texts, done)
    finally:
        d.close()
        monkeypatch.undo()
    for key in requests:
        assert done[key].token_ids == want[key].token_ids and texts[key] == want[key].text, key
