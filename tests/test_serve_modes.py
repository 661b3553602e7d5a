"""The seams a plugin serves through: ``serve_modes`` (its own ``adaptrix serve`` options) and
``create_app(make_executor=...)`` (the same routes over engines that are not in this process)."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from adaptrix.cli.main import main  # noqa: E402
from adaptrix.plugins.host import PluginHost, get_host, set_host  # noqa: E402
from adaptrix.plugins.hookspecs import hookimpl  # noqa: E402
from adaptrix.serve.modes import ServeMode  # noqa: E402


@pytest.fixture
def host():
    """A plugin host with no plugin installed, as the process-wide host; the test may register more."""
    before = get_host()
    fresh = PluginHost(environ={"ADAPTRIX_LOAD_PLUGINS": ""})
    set_host(fresh)
    yield fresh
    set_host(before)


def test_a_scale_out_option_without_its_plugin_says_what_to_install(host, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--replicas", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--replicas needs the adaptrix-ray plugin" in err and "pip install adaptrix-ray" in err


def test_a_plugin_mode_gets_its_options_and_the_checked_server_settings(host, capsys):
    seen = {}

    class Plugin:
        @hookimpl
        def serve_modes(self):
            def add(group):
                group.add_argument("--replicas", type=int)

            def run(args, options):
                seen.update(replicas=args.replicas, key=options.api_key, adapters=options.adapters_dir)
                return 7

            return [ServeMode("fake", "serves elsewhere", add, lambda a: a.replicas is not None, run)]

    host.register(Plugin(), "fake")
    assert "fake" in {mode.name for _, modes in host.call_all("serve_modes") for mode in modes}
    assert main(["serve", "--replicas", "3", "--api-key", "k3y", "--adapters-dir", "ads"]) == 7
    assert seen == {"replicas": 3, "key": "k3y", "adapters": "ads"}
    with pytest.raises(SystemExit):  # the core still checks its own options in a plugin's mode
        main(["serve", "--replicas", "3", "--api-key", ""])
    assert "API key is empty" in capsys.readouterr().err


# -- create_app(make_executor=...) ---------------------------------------------------------------------


class FakeExecutor:
    """Answers every job with its own request echoed, as an executor on another machine would."""

    batching, max_batch, batch_invariant = True, 4, False

    def __init__(self):
        self.requests = []

    def start(self):
        pass

    def stop(self):
        pass

    def submit(self, job):
        from adaptrix.generation.result import GenerationResult
        from adaptrix.serve.executor import response_headers
        from adaptrix.types import GenerationConfig

        self.requests.append(job.request)
        response_headers()["x-adaptrix-replica"] = "r7"
        job.emit(("delta", "hi"))
        job.emit(("done", GenerationResult("hi", (1, 2), 3, "eos", GenerationConfig())))

    def call(self, fn, *, changes=()):
        future = concurrent.futures.Future()
        future.set_result([])  # list_adapters
        return future

    call_all = call

    def model_info(self):
        return {"model_id": "remote-model", "backend": "elsewhere"}

    @property
    def tokenizer(self):
        return None

    async def health(self):
        return {"replicas": [{"id": "r7", "state": "RUNNING"}]}

    async def render_metrics(self):
        return b"remote_metric 1\n", "text/plain"


@pytest.fixture
def remote_app():
    from starlette.testclient import TestClient

    from adaptrix.serve.app import ServeOptions, create_app

    executor = FakeExecutor()
    app = create_app(None, ServeOptions(api_key="k3y"), make_executor=lambda server: executor)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield client, executor


def test_the_app_runs_requests_on_an_executor_it_was_given(remote_app):
    client, executor = remote_app
    auth = {"Authorization": "Bearer k3y"}
    assert client.post("/v1/completions", json={"model": "base", "prompt": "x"}).status_code == 401
    body = {"model": "base", "prompt": [5, 999999], "max_tokens": 4, "logprobs": 2, "stop": ["\n"], "seed": 3}
    answer = client.post("/v1/completions", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] == "hi"
    assert answer.headers["x-adaptrix-replica"] == "r7"
    req = executor.requests[-1]  # the validated request, every field, whatever the executor does with it
    assert (req.prompt, req.logprobs, list(req.settings["stop"]), req.settings["seed"]) == ((5, 999999), 2, ["\n"], 3)
    stream = client.post("/v1/chat/completions", headers=auth, json={
        "model": "base", "messages": [{"role": "user", "content": "x"}], "stream": True})
    assert stream.headers["x-adaptrix-replica"] == "r7" and '"content": "hi"' in stream.text
    health = client.get("/health").json()
    assert health["model"] == "remote-model" and health["replicas"] == [{"id": "r7", "state": "RUNNING"}]
    assert client.get("/metrics", headers=auth).text == "remote_metric 1\n"
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == "remote-model"
