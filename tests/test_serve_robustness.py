"""``adaptrix serve`` under hostile or unlucky clients, on a tiny model: usage from the generation itself, adapter
changes that stall only the requests that need them, abandoned queued streams, slow clients, long prompts, races.

Reuses test_serve's tiny world (model, adapters, oracle) and its helpers.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_serve import PROMPTS, _app, _scheduler_held, _wait_for, world  # noqa: E402,F401  (world: a fixture)

from support.server import LiveServer  # noqa: E402


@pytest.fixture(scope="module")
def oracle(world):
    """An engine on the tiny model, for the counts and finish reasons a generation itself reports."""
    from adaptrix import Engine

    engine = Engine(str(world["model"]), adapters_dir=str(world["ads"]), progress=False)
    engine.initialize()
    yield engine
    engine.cleanup()


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _post_chat(url, body, **kw):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=kw.pop("timeout", 120), **kw)


def _streamed(url, body) -> tuple[str, str | None, dict | None]:
    """Text, finish reason and usage of a streamed chat answer (raw SSE, include_usage)."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    text, finish, usage = [], None, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[len("data: "):])
            for choice in data.get("choices", []):
                text.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
            if data.get("usage"):
                usage = data["usage"]
    return "".join(text), finish, usage


# -- usage and finish_reason come from the generation (issue 15, item 4) --------------------------------


@pytest.mark.parametrize("batching", ["off", "auto"])
def test_streamed_usage_and_finish_reason_are_the_generations(world, oracle, batching):
    """One request at a time (--no-batching, and sliding-window models) used to recount a streamed answer by
    re-tokenizing its text: max_tokens=3 said 'stop, 2' streamed and 'length, 3' plain."""
    cases = [(p, a, m, s) for p in PROMPTS for a, m, s in ((None, 3, None), ("a1", 3, None), ("a2", 12, None))]
    want_text = oracle.generate(PROMPTS[0], adapter="a3", temperature=0, max_new_tokens=12)
    cases.append((PROMPTS[0], "a3", 12, [want_text.split()[1]]))  # a stop string inside the answer
    with LiveServer(_app(world, batching=batching)) as srv:
        for prompt, adapter, max_tokens, stop in cases:
            body = {"model": adapter or "base", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                    "max_tokens": max_tokens, **({"stop": stop} if stop else {})}
            want = oracle.generate_detailed(prompt, adapter=adapter, temperature=0, max_new_tokens=max_tokens,
                                            stop=stop)
            reason = "length" if want.finish_reason == "length" else "stop"
            plain = _post_chat(srv.url, body).json()
            text, finish, usage = _streamed(srv.url, body)
            case = (prompt, adapter, max_tokens, stop)
            assert plain["choices"][0]["message"]["content"] == text == want.text, case
            assert plain["choices"][0]["finish_reason"] == finish == reason, case
            assert plain["usage"]["completion_tokens"] == usage["completion_tokens"] == len(want.token_ids), case
            assert plain["usage"]["prompt_tokens"] == usage["prompt_tokens"] == want.prompt_tokens, case


# -- adapter changes stall only the requests that need them (item 7) ------------------------------------

LONG = 200  # tokens asked of the stream that runs while adapters change
STREAM_SECONDS = 3.0  # how long that stream lasts at least (each decode step slowed down)


def _slow_app(world, delay: float, **options):
    """The tiny world's server with each batched decode step slowed down, so a long stream is still
    running while the test changes adapters."""
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    def make():
        e = Engine(str(world["model"]), adapters_dir=str(world["ads"]), progress=False)
        e.initialize()
        decoder_for = e.step_decoder

        def slowed(max_rows=8, **options):
            decoder = decoder_for(max_rows=max_rows, **options)
            step = decoder.step

            def slow_step():
                time.sleep(delay)
                return step()

            decoder.step = slow_step
            return decoder

        e.step_decoder = slowed
        return e

    return create_app(make, ServeOptions(adapters_dir=str(world["ads"]), enable_adapter_loading=True,
                                         allowed_dirs=(str(world["extra"]),), **options))


def test_adapter_changes_wait_only_for_the_requests_that_use_them(world):
    """A load of a new name and requests for other models do not wait for a running stream; replacing the
    stream's adapter waits for it (the stream ends with the old weights), and requests queued for that
    adapter meanwhile get the new ones. Before: every load or unload waited for every running request,
    and held every request that arrived meanwhile."""
    from adaptrix import Engine

    prompt = PROMPTS[0]
    old = Engine(str(world["model"]), adapters_dir=str(world["ads"]), progress=False)
    old.initialize()
    old.load_adapter(str(world["extra"] / "new1"), name="rt", activate=False)
    old_long = old.generate_detailed(prompt, adapter="rt", temperature=0, max_new_tokens=LONG)
    old.cleanup()
    steps = len(old_long.token_ids)  # the tiny random model may end its turn before LONG
    assert steps >= 30
    new_short = world["greedy"](prompt, "rt", folder=world["extra"] / "new2")

    def load(url, name, folder):
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)},
                       timeout=120)
        assert r.status_code == 200, r.text
        return time.monotonic()

    def chat(url, model, max_tokens=12):
        r = _post_chat(url, {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                             "max_tokens": max_tokens})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"], time.monotonic()

    with LiveServer(_slow_app(world, STREAM_SECONDS / steps)) as srv:
        load(srv.url, "rt", world["extra"] / "new1")
        first = threading.Event()
        stream_end: dict = {}

        def long_stream():
            pieces = []
            with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=120, json={
                    "model": "rt", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                    "max_tokens": LONG, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        pieces.append(choices[0]["delta"].get("content") or "" if choices else "")
                        first.set()
            stream_end["at"] = time.monotonic()
            return "".join(pieces)

        with ThreadPoolExecutor(4) as pool:
            streamed = pool.submit(long_stream)
            assert first.wait(60)
            loaded_new = load(srv.url, "fresh", world["extra"] / "new2")  # a new name: no wait
            replaced = pool.submit(load, srv.url, "rt", world["extra"] / "new2")  # waits for the stream
            _wait_for(lambda: srv.app.state.server.scheduler._calls or replaced.done())
            after = pool.submit(chat, srv.url, "rt")  # needs the adapter being replaced: waits, new weights
            base_text, base_done = chat(srv.url, "base", 3)  # needs nothing being changed: no wait
            other_text, other_done = chat(srv.url, "fresh", 3)
            replace_waited = not replaced.done() and not after.done()
            assert "at" not in stream_end, "the long stream ended before the checks; slow it down further"
            old_text = streamed.result()
            replaced.result()
            after_text, _ = after.result()
    assert loaded_new < stream_end["at"] and base_done < stream_end["at"] and other_done < stream_end["at"]
    assert replace_waited  # the replace waited for the stream on the old weights ...
    assert old_text == old_long.text  # ... which ended with them
    assert after_text == new_short  # queued behind the replace: the new weights
    assert base_text and other_text


# -- abandoned queued streams are not prefilled (item 9) ------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_clients_gone_while_queued_are_dropped_before_prefill(world, stream):
    app = _app(world)
    body = {"model": "a1", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4, "stream": stream}
    with LiveServer(app) as srv:
        prompt_tokens = _metric(srv.url, "adaptrix_prompt_tokens_total")
        cancelled = _metric(srv.url, "adaptrix_cancelled_requests_total")
        with _scheduler_held(app) as scheduler:
            def give_up(_):
                with pytest.raises(httpx.TimeoutException):  # waits for the answer's headers, then hangs up
                    httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=0.5)

            with ThreadPoolExecutor(6) as pool:
                list(pool.map(give_up, range(6)))
            jobs = list(scheduler._jobs)
            assert len(jobs) == 6
            _wait_for(lambda: all(j.cancelled.is_set() for j in jobs), timeout=5)
        _wait_for(lambda: _metric(srv.url, "adaptrix_cancelled_requests_total") == cancelled + 6)
        assert _metric(srv.url, "adaptrix_prompt_tokens_total") == prompt_tokens  # none was prefilled
        ok = _post_chat(srv.url, dict(body, stream=False))
        assert ok.status_code == 200 and _metric(srv.url, "adaptrix_prompt_tokens_total") > prompt_tokens


# -- read timeouts (item 12) ----------------------------------------------------------------------------


def _read_all(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (True) or ``limit`` seconds pass (False)."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return data, True
    except socket.timeout:
        return data, False


def test_slow_clients_are_timed_out_and_a_gone_client_is_one_line(world, caplog):
    caplog.set_level(logging.INFO)
    app = _app(world, header_timeout=0.5, body_timeout=0.5)
    with LiveServer(app) as srv:
        host, port = "127.0.0.1", srv.port
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
                "content-length: 200\r\n\r\n")
        # headers never finished (slowloris): 408, closed
        with socket.create_connection((host, port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            data, closed = _read_all(s, 5)
        assert closed and data.startswith(b"HTTP/1.1 408") and b"--header-timeout" in data
        # a byte now and then does not keep it open: the deadline counts from the start of the request
        with socket.create_connection((host, port)) as s:
            s.settimeout(5)
            start = time.monotonic()
            for char in b"GET /health HTTP/1.1\r\n":
                try:
                    s.sendall(bytes([char]))
                except OSError:
                    break
                time.sleep(0.1)
            data, closed = _read_all(s, 5)
        assert closed and data.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4
        # body never finished: 408 in OpenAI's shape, closed
        with socket.create_connection((host, port)) as s:
            s.sendall(head.encode() + b'{"model": "base"')
            data, closed = _read_all(s, 5)
        assert closed and data.startswith(b"HTTP/1.1 408"), data
        error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
        assert "--body-timeout" in error["message"] and error["code"] == "body_timeout"
        # a client that goes away mid-body: one log line, no traceback, no 500
        caplog.clear()
        with socket.create_connection((host, port)) as s:
            s.sendall(head.encode() + b'{"model": "base"')
        _wait_for(lambda: any(" 499 " in r.getMessage() for r in caplog.records))
        time.sleep(0.2)
        assert httpx.get(srv.url + "/health").status_code == 200
    gone = [r for r in caplog.records if " 499 " in r.getMessage()]
    assert len(gone) == 1 and "went away" in gone[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or " 500 " in r.getMessage() or "internal error" in
                r.getMessage()], [r.getMessage() for r in caplog.records]


# -- without max_tokens, a long prompt gets what fits (item 14) -----------------------------------------


def _prompt_of(oracle, low: int, high: int) -> str:
    """A chat prompt whose formatted length is within [low, high] tokens of the tiny model."""
    for n in range(1, 400):
        text = "the cat sat on the mat " * n
        length = len(oracle.prepare_request(text, max_new_tokens=1).input_ids)
        if low <= length <= high:
            return text
    raise AssertionError("no prompt length fits")


def test_without_max_tokens_a_long_prompt_gets_what_fits(world, oracle):
    """Context 256, default max_new_tokens 128 (half the context): a 200-token prompt used to get 400
    'max_new_tokens=128 leaves room for 128', naming a value the client never sent."""
    ctx = oracle.get_model_info()["context_length"]
    default = oracle.resolve_settings(temperature=0).max_new_tokens
    prompt = _prompt_of(oracle, ctx - default + 8, ctx - 16)
    want = oracle.generate_detailed(prompt, temperature=0)
    assert want.prompt_tokens + len(want.token_ids) <= ctx
    assert want.settings.max_new_tokens == ctx - want.prompt_tokens  # generated up to what fits
    with LiveServer(_app(world)) as srv:
        r = _post_chat(srv.url, {"model": "base", "messages": [{"role": "user", "content": prompt}],
                                 "temperature": 0})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["choices"][0]["message"]["content"] == want.text
        assert answer["usage"]["completion_tokens"] == len(want.token_ids)
        # a prompt that alone fills the context: a 400 about the prompt, naming no max_tokens and no path
        r = _post_chat(srv.url, {"model": "base", "messages": [{"role": "user", "content": "the a " * 600}]})
        error = r.json()["error"]
        assert r.status_code == 400 and "max_tokens" not in error["message"] and "max_new" not in error["message"]
        assert "shorten the prompt" in error["message"] and error["param"] != "max_tokens"
        assert str(world["model"]) not in error["message"] and world["model"].name in error["message"]
        # with max_tokens the client's own number is named, and still no path
        r = _post_chat(srv.url, {"model": "base", "max_tokens": 200,
                                 "messages": [{"role": "user", "content": prompt}]})
        error = r.json()["error"]
        assert r.status_code == 400 and "max_tokens=200" in error["message"] and error["param"] == "max_tokens"
        assert str(world["model"].parent) not in error["message"]


# -- small things (item 15) -------------------------------------------------------------------------------


def test_seed_range_is_the_engines(world):
    """One range, the engine's: 0 to 2**64-1 (the schema allowed -2**63 .. 2**63-1)."""
    from adaptrix.generation.settings import SEED_LIMIT

    chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0.7}
    with LiveServer(_app(world)) as srv:
        for seed in (0, 2**63, SEED_LIMIT - 1):
            r = _post_chat(srv.url, dict(chat, seed=seed))
            assert r.status_code == 200, (seed, r.text)
        for seed in (-1, SEED_LIMIT):
            r = _post_chat(srv.url, dict(chat, seed=seed))
            assert r.status_code == 400 and r.json()["error"]["param"] == "seed", (seed, r.text)
            assert str(SEED_LIMIT - 1) in r.json()["error"]["message"]


def test_a_request_that_raced_an_unload_is_a_404(world):
    """Resolved while the adapter existed, run after it was unloaded: 404, not a Hub hint ('owner/hot')."""
    app = _app(world, enable_adapter_loading=True, allowed_dirs=(str(world["extra"]),))
    with LiveServer(app) as srv:
        r = httpx.post(srv.url + "/v1/load_lora_adapter", json={"lora_name": "hot",
                                                                 "lora_path": str(world["extra"] / "new1")})
        assert r.status_code == 200, r.text
        chat = {"model": "hot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with ThreadPoolExecutor(2) as pool:
            with _scheduler_held(app) as scheduler:
                raced = pool.submit(_post_chat, srv.url, chat)
                _wait_for(lambda: len(scheduler._jobs) == 1)
                unloaded = pool.submit(httpx.post, srv.url + "/v1/unload_lora_adapter", json={"lora_name": "hot"},
                                       timeout=60)
                _wait_for(lambda: len(scheduler._calls) == 1)
            assert unloaded.result().status_code == 200
            r = raced.result()
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and "unloaded" in error["message"] and "owner/" not in error["message"]


def test_a_missing_adapters_folder_is_warned_about(world, tmp_path, caplog):
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    caplog.set_level(logging.INFO, logger="adaptrix.serve")
    missing = tmp_path / "no-such-folder"

    def make():
        e = Engine(str(world["model"]), adapters_dir=str(missing), progress=False)
        e.initialize()
        return e

    with LiveServer(create_app(make, ServeOptions(adapters_dir=str(missing)))) as srv:
        assert httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(missing) in m and "does not exist" in m and "--adapters-dir" in m for m in warned), warned


def test_cors_is_opt_in_and_answers_preflights(world):
    origin = "http://localhost:3000"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with LiveServer(_app(world, api_key="k3y", cors_origins=(origin,))) as srv:
        url = srv.url + "/v1/chat/completions"
        r = httpx.options(url, headers=preflight)  # a preflight carries no key, and needs none
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == origin
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = httpx.post(url, json=chat, headers={"Origin": origin, "Authorization": "Bearer k3y"}, timeout=60)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        r = httpx.post(url, json=chat, headers={"Origin": origin})  # the key is still needed
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
        r = httpx.options(url, headers=dict(preflight, Origin="http://evil.example"))
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    with LiveServer(_app(world)) as srv:  # off by default
        r = httpx.options(srv.url + "/v1/chat/completions", headers=preflight)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
