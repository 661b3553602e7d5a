"""``adaptrix serve`` on the embedded SmolLM2 (llama.cpp, picked by ``--backend auto``) with the example adapters,
and the playground in Chromium.

The module runs pinned to one CPU: llama.cpp sizes its thread pool from the CPUs
this process may use, and its spinning threads are ~30x slower on two busy shared
cores than one thread (measured: 24 tokens in 33 s vs 1 s at load average 5).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from support.server import LiveServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "adapters"
PROMPT = "What is 25 times 8?"
N = 24
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
#: set to 1 to write the playground screenshot into docs/ (otherwise it goes to a pytest tmp folder)
UPDATE_SCREENSHOTS = "ADAPTRIX_UPDATE_SCREENSHOTS"


@pytest.fixture(scope="module")
def one_cpu():
    """Pin this process to one CPU while the module runs (threads started meanwhile inherit it)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def oracle(one_cpu):
    """llama.cpp's own answers: a separate ``Engine(backend="llamacpp")`` on the same GGUF."""
    from support.embedded import require_embedded

    require_embedded("llamacpp")
    from adaptrix import Engine

    engine = Engine(backend="llamacpp", adapters_dir=str(EXAMPLES), progress=False)
    engine.initialize()
    cache: dict = {}

    def greedy(prompt: str, adapter: str | None = None, n: int = N) -> str:
        if (prompt, adapter, n) not in cache:
            cache[prompt, adapter, n] = engine.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=n)
        return cache[prompt, adapter, n]

    yield greedy
    engine.cleanup()


@pytest.fixture(scope="module")
def smol_server(oracle):
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    def make():  # what `adaptrix serve --adapters-dir examples/adapters` builds: --backend auto
        e = Engine(backend="auto", adapters_dir=str(EXAMPLES), progress=False)
        e.initialize()
        return e

    app = create_app(make, ServeOptions(adapters_dir=str(EXAMPLES), enable_adapter_loading=True))
    with LiveServer(app) as srv:
        yield srv


def _metric(url: str, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def _chat(c, model, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0,
                                     max_tokens=N, **kw)


@pytest.mark.real_weights
def test_llamacpp_server_equals_llamacpp_engine(smol_server, oracle):
    url = smol_server.url
    base = httpx.get(url + "/v1/models").json()["data"][0]
    assert base["adaptrix"]["backend"] == "llamacpp"
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    requests_before = _metric(url, "adaptrix_requests_total", adapter="math_specialist", status="ok")
    answers = {}
    for model in ("base", "math_specialist"):
        want = oracle(PROMPT, None if model == "base" else model)
        got = _chat(c, model)
        assert got.choices[0].message.content == want
        assert got.usage.completion_tokens > 0
        streamed = "".join(x.choices[0].delta.content or "" for x in _chat(c, model, stream=True) if x.choices)
        assert streamed == want
        answers[model] = want
    assert answers["base"] != answers["math_specialist"]
    assert _metric(url, "adaptrix_requests_total", adapter="math_specialist", status="ok") == requests_before + 2
    assert _metric(url, "adaptrix_generated_tokens_total", adapter="math_specialist") > 0
    assert _metric(url, "adaptrix_time_to_first_token_seconds_count", adapter="math_specialist") >= 2


@pytest.mark.real_weights
def test_llamacpp_server_decodes_concurrent_requests_together(smol_server, oracle):
    """Concurrent requests across adapters run as parallel llama.cpp sequences; each answer is its answer alone.

    At most one row per adapter (and base rows, which this Q4_1 model computes bit-identically in any batch):
    two rows of one adapter share a decode and may round differently (docs/serve.md, "What a batch may
    change"; the batch-invariant mode that guarantees them is tested in test_llamacpp_steps)."""
    import concurrent.futures
    import time

    url = smol_server.url
    assert httpx.get(url + "/health").json()["batching"] == "iteration-level"
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    jobs = [(PROMPT, "base"), (PROMPT, "math_specialist"), ("Tell me about the sea.", "pirate_style"),
            ("Name three colors.", "base")]

    def ask(job):
        prompt, model = job
        return c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                         temperature=0, max_tokens=N).choices[0].message.content

    running = []
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = [pool.submit(ask, job) for job in jobs]
        while not all(a.done() for a in answers):
            running.append(_metric(url, "adaptrix_running_batch_size"))
            time.sleep(0.02)
        got = [a.result() for a in answers]
    assert max(running) >= 2  # served together, not one after another
    for (prompt, model), text in zip(jobs, got):
        assert text == oracle(prompt, None if model == "base" else model), model


@pytest.mark.real_weights
def test_llamacpp_server_loads_and_unloads_adapters_at_run_time(smol_server, oracle):
    url = smol_server.url
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    loads = _metric(url, "adaptrix_adapter_loads_total")
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "pirate", "lora_path": "pirate_style"},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert _metric(url, "adaptrix_adapter_loads_total") == loads + 1
    listed = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
    assert listed["pirate"]["adaptrix"]["loaded_at_runtime"] is True
    assert _chat(c, "pirate").choices[0].message.content == oracle(PROMPT, "pirate_style")
    r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "pirate"}, timeout=60)
    assert r.status_code == 200, r.text
    assert "pirate" not in {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
    gone = httpx.post(url + "/v1/chat/completions", json={"model": "pirate", "messages": [
        {"role": "user", "content": PROMPT}]})
    assert gone.status_code == 404 and "math_specialist" in gone.json()["error"]["message"]


@pytest.mark.real_weights
def test_llamacpp_adapter_loads_beside_a_running_stream(smol_server, oracle):
    """Loading and unloading another adapter does not wait for a running stream, and the stream (its
    sequence's KV cells, its LoRA) is untouched: its answer is its answer alone."""
    import concurrent.futures
    import json
    import threading
    import time

    url, long = smol_server.url, 160
    want = oracle("Tell me a long story about the sea.", "math_specialist", n=long)
    first, ended = threading.Event(), {}

    def stream():
        pieces = []
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=300, json={
                "model": "math_specialist", "temperature": 0, "max_tokens": long, "stream": True,
                "messages": [{"role": "user", "content": "Tell me a long story about the sea."}]}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[6:])["choices"]
                    pieces.append((choices[0]["delta"].get("content") or "") if choices else "")
                    first.set()
        ended["at"] = time.monotonic()
        return "".join(pieces)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        streamed = pool.submit(stream)
        assert first.wait(120)
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "pirate2", "lora_path": "pirate_style"},
                       timeout=120)
        assert r.status_code == 200, r.text
        loaded = time.monotonic()
        got = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "pirate2", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            "max_tokens": N}).json()["choices"][0]["message"]["content"]
        r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "pirate2"}, timeout=60)
        assert r.status_code == 200, r.text
        unloaded = time.monotonic()
        text = streamed.result()
    assert len(want) > 200 and text == want
    assert got == oracle(PROMPT, "pirate_style")
    assert loaded < ended["at"] and unloaded < ended["at"], "the adapter changes waited for the stream"


@pytest.mark.real_weights
def test_playground_in_headless_chromium(smol_server, oracle, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(smol_server.url + "/")
            page.wait_for_selector("#models input[value='math_specialist']")
            page.fill("#prompt", PROMPT)
            page.fill("#max", str(N))
            page.check("#models input[value='base']")
            page.check("#models input[value='math_specialist']")
            page.click("#run")
            page.wait_for_function("document.querySelectorAll('.col[data-done]').length == 2", timeout=120_000)
            base = page.inner_text(".col[data-model='base'] .out")
            math = page.inner_text(".col[data-model='math_specialist'] .out")
            assert base.strip() == oracle(PROMPT).strip()
            assert math.strip() == oracle(PROMPT, "math_specialist").strip()
            assert "tokens/s" in page.inner_text(".col[data-model='math_specialist'] .rate")
            update = os.environ.get(UPDATE_SCREENSHOTS) == "1"
            shot = (REPO / "docs" if update else tmp_path) / "serve-playground.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


@pytest.mark.real_weights
def test_llamacpp_raw_completions_and_logprobs_equal_raw_llama_cpp(smol_server, embedded_gguf):
    """On llama.cpp, ``/v1/completions`` returns exactly what raw llama.cpp generates (``prompt + text`` is the
    decoded prompt + greedy continuation, nothing trimmed) and ``echo`` + ``logprobs`` + ``max_tokens: 0``
    scores the prompt as raw llama.cpp's logits do (token ids sent as they are)."""
    from support.llamacpp import RawLlama

    url = smol_server.url + "/v1/completions"
    with RawLlama(embedded_gguf, n_ctx=512) as raw:
        for prompt in ("The capital of France is", "def add(a, b):\n    "):
            ids = raw.tokenize(prompt)
            want = raw.detokenize(ids + raw.greedy(ids, 8))
            got = httpx.post(url, json={"prompt": prompt, "max_tokens": 8, "temperature": 0}, timeout=120).json()
            assert prompt + got["choices"][0]["text"] == want
        ids = raw.tokenize("The capital of France is Paris")
        lp = raw.logprobs(ids)
        out = httpx.post(url, json={"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 0,
                                    "model": "base"}, timeout=120).json()["choices"][0]
    assert out["text"] == "The capital of France is Paris"
    got = out["logprobs"]["token_logprobs"]
    assert got[0] is None and len(got) == len(ids)
    assert max(abs(got[i] - lp[i - 1, ids[i]]) for i in range(1, len(ids))) < 1e-4
