"""``adaptrix serve`` on the embedded SmolLM2 with the example adapters, and the playground in Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from support.server import LiveServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "adapters"
PROMPT = "What is 25 times 8?"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def smol_server(one_thread):
    from adaptrix.default_model import default_model_path
    from adaptrix.errors import ModelConfigError

    try:
        default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app

    engines = []

    def make():
        e = Engine(adapters_dir=str(EXAMPLES), progress=False)
        e.initialize()
        engines.append(e)
        return e

    app = create_app(make, ServeOptions(adapters_dir=str(EXAMPLES), enable_adapter_loading=True))
    with LiveServer(app) as srv:
        srv.engine = engines[0]
        yield srv


@pytest.mark.real_weights
def test_base_and_example_adapters_equal_engine(smol_server):
    c = openai.OpenAI(base_url=smol_server.url + "/v1", api_key="x", max_retries=0)
    engine = smol_server.engine
    answers = {}
    for model in ("base", "math_specialist", "pirate_style"):
        got = c.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                        temperature=0, max_tokens=24).choices[0].message.content
        # the oracle runs on the server's own engine through its scheduler (one owner of the engine)
        want = smol_server.app.state.server.scheduler.call(
            lambda e, m=model: e.generate(PROMPT, adapter=None if m == "base" else m, temperature=0,
                                          max_new_tokens=24)).result()
        assert got == want
        answers[model] = got
    assert len(set(answers.values())) == 3
    assert engine.is_initialized


@pytest.mark.real_weights
def test_playground_in_headless_chromium(smol_server):
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
            page.fill("#max", "40")
            page.check("#models input[value='base']")
            page.check("#models input[value='math_specialist']")
            page.click("#run")
            page.wait_for_function("document.querySelectorAll('.col[data-done]').length == 2", timeout=120_000)
            base = page.inner_text(".col[data-model='base'] .out")
            math = page.inner_text(".col[data-model='math_specialist'] .out")
            assert base and math and base != math
            assert "tokens/s" in page.inner_text(".col[data-model='math_specialist'] .rate")
            shot = REPO / "docs" / "serve-playground.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
