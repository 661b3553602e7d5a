"""``adaptrix serve`` on a tiny model: a real uvicorn, the official openai client, every error path."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from support.adapters import build_variant, make_adapter  # noqa: E402
from support.server import LiveServer  # noqa: E402

ADAPTERS = ("a1", "a2", "a3", "a4")
PROMPTS = ["What is machine learning?", "The capital of France", "def add(a, b)", "Hello Alice, how are you?"]
N = 12  # new tokens


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory, one_thread):
    """A tiny model, four adapters in its folder, extra adapters elsewhere, and the oracle engine."""
    from adaptrix import Engine

    model = tiny_model("qwen2")
    root = tmp_path_factory.mktemp("serve")
    ads = root / "adapters"
    for i, name in enumerate(ADAPTERS):
        make_adapter(model, ads / name, seed=i + 1)
    extra = root / "extra"
    make_adapter(model, extra / "new1", seed=11)
    make_adapter(model, extra / "new2", seed=12)
    shutil.copytree(extra / "new1", ads / "runtime_src")
    # refused ones
    corrupt = make_adapter(model, extra / "corrupt", seed=13)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    variant = build_variant(model, root / "variant", hidden_size=48, num_attention_heads=4, num_key_value_heads=2)
    make_adapter(variant, extra / "wrongshape", seed=14)
    pickled = make_adapter(model, extra / "pickled", seed=15)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "adapter_model.safetensors")), str(pickled / "adapter_model.bin"))
    (pickled / "adapter_model.safetensors").unlink()
    outside = make_adapter(model, root / "outside" / "o1", seed=16)
    (ads / "link_out").symlink_to(outside, target_is_directory=True)

    oracle = Engine(str(model), adapters_dir=str(ads), progress=False)
    oracle.initialize()
    cache: dict = {}

    def greedy(prompt, adapter=None, raw=False, folder=None):
        key = (prompt, adapter, raw, folder)
        if key not in cache:
            if folder is not None:
                o = Engine(str(model), adapters_dir=str(ads), progress=False)
                o.initialize()
                o.load_adapter(str(folder), name=adapter, activate=False)
                cache[key] = o.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=N, raw=raw)
                o.cleanup()
            else:
                cache[key] = oracle.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=N, raw=raw)
        return cache[key]

    return {"model": model, "ads": ads, "extra": extra, "root": root, "greedy": greedy}


def _app(world, **options):
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    def make():
        e = Engine(str(world["model"]), adapters_dir=str(world["ads"]), progress=False)
        e.initialize()
        return e

    return create_app(make, ServeOptions(adapters_dir=str(world["ads"]), **options))


@pytest.fixture(scope="module")
def server(world):
    with LiveServer(_app(world, enable_adapter_loading=True, allowed_dirs=(str(world["extra"]),),
                         max_body_bytes=4096)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _chat(client, model, prompt, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, max_tokens=N, **kw)


def test_health_was_503_while_loading_then_200(server):
    assert server.health_codes[-1] == 200
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("model", ["base", *ADAPTERS])
def test_openai_sync_equals_engine_greedy(client, world, model):
    adapter = None if model == "base" else model
    want = world["greedy"](PROMPTS[0], adapter)
    got = _chat(client, model, PROMPTS[0])
    assert got.choices[0].message.content == want
    assert got.usage.completion_tokens > 0 and got.usage.prompt_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in _chat(client, model, PROMPTS[0], stream=True) if c.choices]
    assert "".join(pieces) == want


def test_answers_differ_between_adapters(client):
    answers = {m: _chat(client, m, PROMPTS[1]).choices[0].message.content for m in ("base", "a1", "a2")}
    assert len(set(answers.values())) == 3


def test_openai_async_streamed_and_not(server, world):
    import asyncio

    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        full = await c.chat.completions.create(model="a2", messages=[{"role": "user", "content": PROMPTS[2]}],
                                               temperature=0, max_tokens=N)
        stream = await c.chat.completions.create(model="a2", messages=[{"role": "user", "content": PROMPTS[2]}],
                                                 temperature=0, max_tokens=N, stream=True,
                                                 stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
        await c.close()
        return full, "".join(pieces), usage

    full, streamed, usage = asyncio.run(main())
    want = world["greedy"](PROMPTS[2], "a2")
    assert full.choices[0].message.content == want == streamed
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_text_completions_are_raw_prompts(client, world):
    got = client.completions.create(model="a1", prompt=PROMPTS[3], temperature=0, max_tokens=N)
    assert got.choices[0].text == world["greedy"](PROMPTS[3], "a1", raw=True)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="a1", prompt=PROMPTS[3], temperature=0, max_tokens=N, stream=True))
    assert streamed == got.choices[0].text


def test_sse_ends_with_done(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "base", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 3,
        "temperature": 0})
    lines = [x for x in r.text.split("\n\n") if x]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"


def test_composition_in_extra_body(client):
    one = _chat(client, "base", PROMPTS[0], extra_body={"adapters": {"a1": 1.0}}).choices[0].message.content
    assert one == _chat(client, "a1", PROMPTS[0]).choices[0].message.content
    mix = _chat(client, "base", PROMPTS[0], extra_body={"adapters": {"a1": 0.5, "a2": 0.5}}).choices[0]
    assert mix.message.content not in (one, _chat(client, "a2", PROMPTS[0]).choices[0].message.content)
    task = _chat(client, "base", PROMPTS[0], extra_body={"task_type": "code"})
    assert task.choices[0].message.content


def test_models_lists_base_and_adapters(server, client, world):
    idle = world["ads"] / "idle"
    shutil.copytree(world["ads"] / "a1", idle)  # an adapter no request has named yet
    try:
        _chat(client, "a1", PROMPTS[0])  # a1 has answered: its weights are in memory
        data = httpx.get(server.url + "/v1/models").json()["data"]
    finally:
        shutil.rmtree(idle)
    ids = [m["id"] for m in data]
    base = data[0]["id"]
    assert {"a1", "a2", "a3", "a4", "idle"} <= set(ids)
    a1 = next(m for m in data if m["id"] == "a1")
    assert a1["parent"] == base and a1["adaptrix"]["rank"] == 4
    assert data[0]["adaptrix"]["backend"] == "transformers"
    assert sorted(a1["adaptrix"]["targets"]) == ["q_proj", "v_proj"]
    assert a1["adaptrix"]["resident"] is True
    assert next(m for m in data if m["id"] == "idle")["adaptrix"]["resident"] is False


BAD = [
    ("malformed json", b"{not json", 400, "invalid_json"),
    ("missing messages", {"model": "base"}, 400, "messages"),
    ("unknown model", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "a1"),
    ("negative temperature", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": -1},
     400, "temperature"),
    ("nan temperature", b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     400, "temperature"),
    ("n=9", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 9}, 400, "'n'"),
    ("unknown field", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "temprature": 0}, 400,
     "temprature"),
    ("beyond context", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000},
     400, "max_tokens"),
    ("long prompt", {"model": "base", "messages": [{"role": "user", "content": "the a " * 600}], "max_tokens": 8},
     400, None),
    ("body too large", {"model": "base", "messages": [{"role": "user", "content": "x" * 5000}]}, 413, "limit"),
    ("not an object", [1, 2], 400, "JSON object"),
    ("bad role", {"model": "base", "messages": [{"role": "robot", "content": "hi"}]}, 400, "robot"),
    ("bad stop", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "stop": 5}, 400, "stop"),
    ("bad task", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "task_type": "x"}, 400, "task"),
    ("bad weight", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "adapters": {"a1": "x"}},
     400, "a1"),
    ("huge seed", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "seed": 10**30}, 400, "seed"),
    ("empty body", b"", 400, "empty"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_openai_error(server, case):
    _, body, status, needle = case
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/v1/chat/completions", headers={"content-type": "application/json"}, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if needle:
        assert needle in err["message"] or needle == err.get("param") or needle == err.get("code"), err
    assert httpx.get(server.url + "/health").status_code == 200


def test_unknown_route_and_method_are_openai_shaped(server):
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["message"].startswith("no route")
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405


def _models(server):
    return {m["id"]: m["adaptrix"].get("resident") for m in httpx.get(server.url + "/v1/models").json()["data"]}


def _load(server, name, path):
    return httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                      timeout=60)


@pytest.mark.parametrize("which,status", [("corrupt", 400), ("wrongshape", 400), ("pickled", 400),
                                          ("outside", 403), ("symlink", 403), ("missing", 404)])
def test_refused_adapters_change_nothing(server, world, which, status):
    path = {"outside": world["root"] / "outside" / "o1", "symlink": world["ads"] / "link_out",
            "missing": world["extra"] / "nope"}.get(which, world["extra"] / which)
    before = _models(server)
    r = _load(server, "bad", path)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    if which == "wrongshape":
        assert r.json()["error"]["report"]["errors"]
    assert _models(server) == before


def test_load_replace_unload(server, client, world):
    old_want = world["greedy"](PROMPTS[0], "rt", folder=world["extra"] / "new1")
    new_want = world["greedy"](PROMPTS[0], "rt", folder=world["extra"] / "new2")
    assert old_want != new_want
    assert _load(server, "rt", world["extra"] / "new1").status_code == 200
    assert "rt" in _models(server)
    assert _chat(client, "rt", PROMPTS[0]).choices[0].message.content == old_want
    # replace while a stream on the old weights is running: it ends with the old weights
    stream = _chat(client, "rt", PROMPTS[0], stream=True)
    first = next(iter(stream))
    with ThreadPoolExecutor(1) as pool:
        replaced = pool.submit(_load, server, "rt", world["extra"] / "new2")
        rest = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert replaced.result().json()["replaced"] is True
    assert (first.choices[0].delta.content or "") + rest == old_want
    assert _chat(client, "rt", PROMPTS[0]).choices[0].message.content == new_want
    r = httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "rt"})
    assert r.status_code == 200
    assert "rt" not in _models(server)
    assert httpx.post(server.url + "/v1/chat/completions", json={
        "model": "rt", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404
    assert httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "rt"}).status_code == 404
    # a relative path resolves in the adapters folder
    assert _load(server, "rel", "runtime_src").status_code == 200


def test_a_refused_replacement_keeps_the_old_adapter_serving(server, client, world):
    want = world["greedy"](PROMPTS[0], "keep", folder=world["extra"] / "new1")
    assert _load(server, "keep", world["extra"] / "new1").status_code == 200
    for which, code in (("corrupt", "adapter_invalid"), ("wrongshape", "adapter_invalid"),
                        ("pickled", "pickle_refused")):
        r = _load(server, "keep", world["extra"] / which)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        assert _chat(client, "keep", PROMPTS[0]).choices[0].message.content == want
    assert httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "keep"}).status_code == 200


def test_load_test_with_a_disconnect(server, world):
    jobs = [(PROMPTS[i % 4], (None, *ADAPTERS)[i % 5]) for i in range(32)]
    url = server.url + "/v1/chat/completions"

    def one(job):
        prompt, adapter = job
        r = httpx.post(url, json={"model": adapter or "base", "messages": [{"role": "user", "content": prompt}],
                                  "temperature": 0, "max_tokens": N}, timeout=120)
        return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text

    def metric(name):
        text = httpx.get(server.url + "/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")
                   or line.startswith(name + " "))

    cancelled = metric("adaptrix_cancelled_requests_total")

    def disconnect():
        with httpx.stream("POST", url, json={"model": "a1", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 200, "temperature": 0, "stream": True}) as r:
            for _ in r.iter_lines():
                break  # first chunk read, then hang up

    with ThreadPoolExecutor(8) as pool:
        gone = pool.submit(disconnect)
        results = list(pool.map(one, jobs))
        gone.result()
    assert [s for s, _ in results] == [200] * 32
    for (prompt, adapter), (_, text) in zip(jobs, results):
        assert text == world["greedy"](prompt, adapter)
    for _ in range(100):
        if metric("adaptrix_cancelled_requests_total") > cancelled:
            break
        threading.Event().wait(0.05)
    assert metric("adaptrix_cancelled_requests_total") == cancelled + 1
    assert metric("adaptrix_generated_tokens_total") > 0
    assert httpx.get(server.url + "/health").status_code == 200


def test_loading_off_by_default_and_api_key(world, caplog):
    caplog.set_level("INFO", logger="adaptrix.serve")
    app = _app(world, api_key="sekret", max_queue=1)
    with LiveServer(app) as srv:
        url = srv.url
        assert httpx.get(url + "/health").status_code == 200
        # the playground page is served without the key: it holds no data and asks for the key itself
        page = httpx.get(url + "/")
        assert page.status_code == 200 and 'id="key"' in page.text and "sekret" not in page.text
        assert any("playground page GET /" in r.getMessage() for r in caplog.records)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer sekret"}
        assert httpx.get(url + "/v1/models", headers=ok).status_code == 200
        r = httpx.post(url + "/v1/load_lora_adapter", headers=ok,
                       json={"lora_name": "x", "lora_path": str(world["extra"] / "new1")})
        assert r.status_code == 403 and "--enable-adapter-loading" in r.json()["error"]["message"]
        chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with ThreadPoolExecutor(1) as pool, _scheduler_held(app) as scheduler:
            queued = pool.submit(httpx.post, url + "/v1/chat/completions", headers=ok, json=chat, timeout=60)
            _wait_for(lambda: len(scheduler._jobs) == 1)  # the queue (--max-queue 1) is full
            r = httpx.post(url + "/v1/chat/completions", headers=ok, json=chat)
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert queued.result().status_code == 200


def _wait_for(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


@contextlib.contextmanager
def _scheduler_held(app):
    """The scheduler thread busy in a call until the body ends: requests stay queued meanwhile."""
    scheduler = app.state.server.scheduler
    gate, inside = threading.Event(), threading.Event()

    def hold(engine):
        inside.set()
        assert gate.wait(60), "the test never released the scheduler"

    scheduler.call(hold)
    assert inside.wait(30)
    try:
        yield scheduler
    finally:
        gate.set()


def test_serial_mode_answers_equal_batched(world):
    with LiveServer(_app(world, batching="off")) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        for model in ("base", "a3"):
            want = world["greedy"](PROMPTS[1], None if model == "base" else model)
            assert _chat(c, model, PROMPTS[1]).choices[0].message.content == want
            assert "".join(x.choices[0].delta.content or "" for x in _chat(c, model, PROMPTS[1], stream=True)
                           if x.choices) == want
        hist = c.chat.completions.create(model="base", temperature=0, max_tokens=N, messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": PROMPTS[0]}])
        assert hist.choices[0].message.content


def test_adapter_budget_holds_for_a_running_batch(world):
    """--max-loaded-adapters 2, requests over 3 adapters at once: never over budget, no adapter evicted
    while a row uses it, every answer equal to the request served alone."""
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    seen = {"resident": [], "evicted_in_use": [], "batch_adapters": []}
    holder = {}

    def make():
        e = Engine(str(world["model"]), adapters_dir=str(world["ads"]), progress=False, max_loaded_adapters=2)
        e.initialize()
        original = e.runner.decoding_model

        def watched(adapters):
            out = original(adapters)
            resident = {r["name"] for r in e.list_adapters() if r.get("loaded")}
            running = holder["server"].scheduler.running_adapters()
            seen["resident"].append(len(resident))
            seen["batch_adapters"].append(len({a for a in adapters if a}))
            seen["evicted_in_use"].append(sorted(running - resident))
            return out

        e.runner.decoding_model = watched  # what the runner builds its step decoder with
        return e

    app = create_app(make, ServeOptions(adapters_dir=str(world["ads"]), max_batch=8))
    holder["server"] = app.state.server
    jobs = [(PROMPTS[i % 4], ("a1", "a2", "a3", None)[i % 4]) for i in range(8)]
    with LiveServer(app) as srv:
        def one(job):
            prompt, adapter = job
            return httpx.post(srv.url + "/v1/chat/completions", timeout=120, json={
                "model": adapter or "base", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": N})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, jobs))
    assert [r.status_code for r in answers] == [200] * len(jobs), [r.text for r in answers]
    for (prompt, adapter), r in zip(jobs, answers):
        assert r.json()["choices"][0]["message"]["content"] == world["greedy"](prompt, adapter)
    assert seen["resident"] and max(seen["resident"]) <= 2, seen["resident"]
    assert max(seen["batch_adapters"]) == 2  # the batch did mix adapters, up to the budget
    assert not any(seen["evicted_in_use"]), seen["evicted_in_use"]


def test_while_loading_health_is_503_and_every_api_route_answers_503(world):
    """An engine factory that blocks until the test releases it: 503s in OpenAI's shape, no hang, then 200."""
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    release = threading.Event()

    def make():
        assert release.wait(120), "the test never released the engine factory"
        e = Engine(str(world["model"]), adapters_dir=str(world["ads"]), progress=False)
        e.initialize()
        return e

    chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    app = create_app(make, ServeOptions(adapters_dir=str(world["ads"]), enable_adapter_loading=True))
    with LiveServer(app, ready=False) as srv:
        try:
            h = httpx.get(srv.url + "/health", timeout=5)
            assert h.status_code == 503 and h.json()["status"] == "loading"
            calls = [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat),
                     ("POST", "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2}),
                     ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "runtime_src"}),
                     ("POST", "/v1/unload_lora_adapter", {"lora_name": "a1"})]
            for method, path, body in calls:
                r = httpx.request(method, srv.url + path, json=body, timeout=5)  # a hang fails here
                assert r.status_code == 503, (path, r.status_code, r.text)
                err = r.json()["error"]
                assert set(err) >= {"message", "type", "param", "code"} and err["code"] == "loading", (path, err)
                assert "loading" in err["message"] and "/health" in err["message"]
            assert httpx.get(srv.url + "/", timeout=5).status_code == 200  # the page itself needs no model
        finally:
            release.set()
        for _ in range(600):
            if httpx.get(srv.url + "/health", timeout=5).status_code == 200:
                break
            threading.Event().wait(0.05)
        assert httpx.get(srv.url + "/health", timeout=5).json()["status"] == "ok"
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_compositions_are_bounded_and_rebuilt_when_asked_again(world, monkeypatch):
    """Past MAX_COMPOSITIONS the least recently used composition is unloaded, never one a running request
    uses; asked for again it is rebuilt with the same answer."""
    from adaptrix.adapters import compositions

    monkeypatch.setattr(compositions, "MAX_COMPOSITIONS", 2)
    mixes = [{"a1": 0.5, "a2": 0.5}, {"a1": 0.3, "a3": 0.7}, {"a2": 0.2, "a4": 0.8}, {"a3": 0.6, "a4": 0.4}]
    app = _app(world)
    engine = lambda: app.state.server.scheduler.engine  # noqa: E731

    def built():
        return sorted(r["name"] for r in engine().list_adapters() if r["name"].startswith("composed-"))

    def ask(url, mix):
        r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "base", "messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0,
            "max_tokens": N, "adapters": mix})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with LiveServer(app) as srv:
        first = [ask(srv.url, m) for m in mixes[:3]]
        assert len(built()) == 2 and len(set(first)) == 3
        assert ask(srv.url, mixes[0]) == first[0]  # the oldest was unloaded, then built again
        assert len(built()) == 2
        with ThreadPoolExecutor(4) as pool:  # four at once: none unloaded while it runs
            together = list(pool.map(lambda m: ask(srv.url, m), mixes))
        assert together[:3] == first
        ask(srv.url, mixes[1])
        assert len(built()) == 2


def test_batch_invariant_flag_reaches_the_step_decoder_and_answers_equal_alone(world, monkeypatch):
    """``adaptrix serve --batch-invariant`` -> ServeOptions -> the scheduler's step decoder computes every row
    as the request alone: concurrent requests of one adapter get the greedy answers each gets alone."""
    import uvicorn

    from adaptrix.cli.main import build_parser

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.setdefault("options", self.config.app.state.server.options))
    args = build_parser().parse_args(["serve", "--batch-invariant"])
    assert args.func(args) == 0 and seen["options"].batch_invariant is True
    assert build_parser().parse_args(["serve"]).batch_invariant is False
    monkeypatch.undo()

    app = _app(world, batch_invariant=True)
    jobs = [(p, "a1") for p in PROMPTS] + [(PROMPTS[0], None), (PROMPTS[1], "a2")]

    def ask(url, job):
        prompt, model = job
        r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": model or "base", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": N})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with LiveServer(app) as srv:
        assert app.state.server.scheduler._decoder.batch_invariant is True
        with ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(lambda job: ask(srv.url, job), jobs))
    assert got == [world["greedy"](p, a) for p, a in jobs]
