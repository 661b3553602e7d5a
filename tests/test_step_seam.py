"""The step-decoder seam (:class:`adaptrix.generation.steps.StepDecoder`): what ``adaptrix serve`` drives.

A third backend, registered in-process, whose decoder is built from its own
pieces and satisfies the Protocol, is what the server's scheduler batches with;
its answers equal the backend's own ``generate`` of each request alone and, the
independent oracle, the backend's scripted tokens decoded by the tokenizer
(through the request's text pipeline, which trims the reply).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from adaptrix.backends.contract import Backend, Runner
from adaptrix.generation.steps import Row, StepDecoder, add_each, finish_row, row_tail
from support.adapters import make_adapter

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from support.server import LiveServer  # noqa: E402

N = 6
PROMPTS = ["What is machine learning?", "The capital of France", "def add(a, b)", "Hello Alice, how are you?"]
ADAPTER = "a1"


def script(ids, n: int, adapter: str | None, eos) -> list[int]:
    """The scripted backend's answer: the prompt's ids (no end-of-turn id) read backwards from an offset past
    the chat template's last line, moved by the adapter, ``n`` of them. Known in advance: the oracle."""
    pool = [t for t in ids if t not in eos][::-1]
    start = 12 if adapter is None else 15
    return [pool[(start + j) % len(pool)] for j in range(n)]


#: Every scripted decoder the runner built, for the test to look at.
DECODERS: list = []


class ScriptedDecoder:
    """A step decoder of the third backend: the shared Row, finish and tail; nothing of the engine."""

    def __init__(self, tokenizer, eos, *, lease, max_rows: int):
        self.tokenizer, self.eos, self.lease, self.max_rows = tokenizer, eos, lease, max_rows
        self.rows: list[Row] = []
        self.stepped: list[tuple] = []  # the keys of every step's rows
        DECODERS.append(self)

    def add(self, key, prepared, adapter):
        from adaptrix.errors import BatchFullError

        if len(self.rows) >= self.max_rows:
            raise BatchFullError("full")
        with self.lease:
            row = Row.open(key, prepared, adapter, self.tokenizer)
            self.rows.append(row)
            return row, self._next(row)

    def add_many(self, items):
        return add_each(self, items)

    def step(self):
        with self.lease:
            self.stepped.append(tuple(r.key for r in self.rows))
            return [(row, self._next(row)) for row in self.rows]

    def remove(self, row):
        self.rows.remove(row)

    def tail(self, row):
        return row_tail(row)

    def finish(self, row):
        return finish_row(row.prepared, row.generated, self.tokenizer)

    def close(self):
        self.rows.clear()

    def _next(self, row) -> str:
        ids = script(row.prepared.input_ids, row.prepared.settings.max_new_tokens, row.adapter, self.eos)
        return row.accept(ids[len(row.generated)])


class ScriptedRunner(Runner):
    """Tokenizer and adapter manager of a transformers runner; generation scripted."""

    backend = "scripted"
    capabilities = frozenset({"step_decode"})

    def __init__(self, real):
        self.real, self.source, self.loaded = real, real.source, real.loaded
        self.eos_ids, self.pad_id = real.eos_ids, real.pad_id
        self.manager = None

    def adapter_manager(self, adapters_dir, **options):
        self.manager = self.real.adapter_manager(adapters_dir, **options)
        return self.manager

    def generate(self, rows, cfg, *, adapters=None, stop=None, on_tokens=None, cancel=None):
        out = []
        for i, ids in enumerate(rows):
            adapter = adapters[i] if adapters is not None else self.manager.active
            new: list[int] = []
            for token in script(ids, cfg.max_new_tokens, adapter, self.eos_ids):
                new.append(token)
                if on_tokens is not None:
                    on_tokens([token])
                if stop is not None and stop(i, new):
                    break
            out.append(new)
        return out

    def step_decoder(self, *, lease, max_rows=8, batch_invariant=False):
        return ScriptedDecoder(self.loaded.tokenizer, self.eos_ids, lease=lease, max_rows=max_rows)

    def info(self):
        return {"dtype": "scripted", "device": "cpu", "parameters": 0}

    def close(self):
        self.real.close()


class Scripted(Backend):
    name = "scripted"
    summary = "a scripted test backend"

    def load(self, source, options, host):
        from adaptrix.backends.transformers.runner import TransformersBackend

        return ScriptedRunner(TransformersBackend().load(source, options, host))


@pytest.fixture
def scripted_host():
    """The process's plugin host with the scripted backend registered; the session's host back afterwards."""
    from adaptrix import hookimpl
    from adaptrix.plugins.host import PluginHost, get_host, set_host

    class Plugin:
        @hookimpl
        def backends(self):
            return [Scripted()]

    before = get_host()
    host = PluginHost(environ={}, strict=True)
    host.load_entry_points()
    host.register(Plugin(), "scripted-test")
    set_host(host)
    DECODERS.clear()
    yield host
    set_host(before)


def test_a_third_backends_decoder_is_what_the_scheduler_drives(scripted_host, tiny_model, tmp_path, one_thread):
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    model = tiny_model("qwen2")
    make_adapter(model, tmp_path / ADAPTER, seed=1)

    def make():
        e = Engine(str(model), adapters_dir=str(tmp_path), progress=False, backend="scripted")
        e.initialize()
        return e

    oracle = make()
    try:
        jobs = [(p, (None, ADAPTER)[i % 2]) for i, p in enumerate(PROMPTS)]
        want = {}
        for prompt, adapter in jobs:
            prepared = oracle.prepare_request(prompt, adapter=adapter, temperature=0, max_new_tokens=N)
            ids = script(prepared.input_ids, N, adapter, oracle.runner.eos_ids)
            want[prompt] = prepared.pipeline().run(oracle.tokenizer.decode(ids, skip_special_tokens=True))
            assert oracle.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=N) == want[prompt]
        assert len(set(want.values())) == len(want)  # the adapter changes the answers
        assert isinstance(oracle.step_decoder(max_rows=2), StepDecoder)
    finally:
        oracle.cleanup()
    DECODERS.clear()

    with LiveServer(create_app(make, ServeOptions(adapters_dir=str(tmp_path), max_batch=4))) as srv:
        assert httpx.get(srv.url + "/health").json()["batching"] == "iteration-level"

        def ask(job):
            prompt, adapter = job
            return httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
                "model": adapter or "base", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": N})

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, jobs))
    assert [r.status_code for r in answers] == [200] * len(jobs), [r.text for r in answers]
    for (prompt, _), r in zip(jobs, answers):
        body = r.json()
        assert body["choices"][0]["message"]["content"] == want[prompt]
        assert body["usage"]["completion_tokens"] == N
    (decoder,) = DECODERS  # the one the scheduler asked the engine for
    assert decoder.stepped and not decoder.rows  # it stepped, and every row was removed
    assert len({id(key) for keys in decoder.stepped for key in keys}) == len(jobs)  # every request was stepped


def test_a_step_decoder_that_lacks_the_protocol_is_refused_by_name(scripted_host, tiny_model, tmp_path, monkeypatch):
    from adaptrix import Engine
    from adaptrix.errors import BackendError

    e = Engine(str(tiny_model("qwen2")), adapters_dir=str(tmp_path), progress=False, backend="scripted")
    e.initialize()
    try:
        monkeypatch.setattr(e.runner, "step_decoder", lambda **kw: object())
        with pytest.raises(BackendError, match="scripted backend's step_decoder returned a object.*StepDecoder"):
            e.step_decoder(max_rows=2)
        with pytest.raises(BackendError, match="scripted backend's step decoder cannot compute rows as if alone"):
            e.step_decoder(max_rows=2, batch_invariant=True)  # it does not declare "batch_invariant"
    finally:
        e.cleanup()
