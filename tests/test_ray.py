"""adaptrix-ray on a real Ray cluster: two nodes on this machine (``ray start --head`` and ``ray start
--address``, one CPU each, every process on 127.0.0.1), two engine replicas of the embedded SmolLM2 on
llama.cpp with one thread each, the example adapters served from a ``file://`` URL.

One cluster and one application for the module (about a minute); the last test starts
``adaptrix serve --replicas 1`` with its own local cluster and checks that no Ray process outlives it.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from support.fake_dist import make_dist  # noqa: E402
from support.server import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "adapters"
KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "What is 25 times 8?"
N = 16
RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _wait_gone(pids: set[int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


@pytest.fixture(scope="module")
def oracle():
    """The llama.cpp engine alone, one thread, as each replica runs it."""
    from support.embedded import require_embedded

    require_embedded("llamacpp")
    from adaptrix import Engine

    engine = Engine(backend="llamacpp", adapters_dir=str(EXAMPLES), threads=1, progress=False)
    engine.initialize()
    cache: dict = {}

    def greedy(prompt: str, adapter: str | None = None) -> str:
        if (prompt, adapter) not in cache:
            cache[prompt, adapter] = engine.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=N)
        return cache[prompt, adapter]

    yield greedy
    engine.cleanup()


@pytest.fixture(scope="module")
def two_nodes(oracle):
    """A head and a worker node, one CPU each, both on 127.0.0.1; stopped (every process) at the end."""
    import ray

    from adaptrix_ray.cluster import loopback_only

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    # Ray's token authentication, with this cluster's own token (not the user's ~/.ray/auth_token)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    before = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    from ray._raylet import Config

    Config.initialize("")  # Ray read RAY_AUTH_MODE when it was imported: read it again
    env = {**os.environ, **LOOPBACK_ENV}
    port = free_port()
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp,
              "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             "--ray-client-server-port", str(free_port()), *common], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    starters = [head]
    spawned: set[int] = set()
    try:
        loopback_only()
        deadline = time.monotonic() + 90
        while True:
            try:
                ray.init(address=f"127.0.0.1:{port}", _node_ip_address="127.0.0.1", logging_level="ERROR",
                         log_to_driver=False)
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(0.5)
        # the second node: `ray start --address` through support.ray_loopback (see there why)
        worker_env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        starters.append(subprocess.Popen([sys.executable, "-m", "support.ray_loopback", "start", "--address",
                                          f"127.0.0.1:{port}", *common], env=worker_env, cwd=REPO / "tests",
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.5)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        spawned = set().union(*(_descendants(p.pid) for p in starters))
        yield nodes
    finally:
        spawned |= set().union(*(_descendants(p.pid) for p in starters))
        ray.shutdown()
        for p in reversed(starters):  # the worker node first, then the head
            p.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        left = _wait_gone(spawned, timeout=10)
        for pid in left | {p.pid for p in starters if p.poll() is None}:  # never leave one running
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert not left, f"Ray processes left after the cluster stopped: {sorted(left)}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The example adapters behind a file:// URL, plus a folder adapters may be loaded from at run time."""
    root = tmp_path_factory.mktemp("ray-store")
    shutil.copytree(EXAMPLES, root / "remote")
    allowed = root / "allowed"
    shutil.copytree(EXAMPLES / "pirate_style", allowed / "pirate_copy")
    (allowed / "pickled").mkdir()  # weights only as a pickle: refused unread
    shutil.copy(EXAMPLES / "pirate_style" / "adapter_config.json", allowed / "pickled")
    (allowed / "pickled" / "adapter_model.bin").write_bytes(b"not really a pickle")
    return root


@pytest.fixture(scope="module")
def server(two_nodes, store):
    from ray import serve

    from adaptrix_ray.application import build
    from adaptrix_ray.config import from_args

    config = from_args({
        "backend": "llamacpp", "threads": 1, "num_replicas": 2, "num_cpus": 1, "max_adapters_per_replica": 1,
        "adapters_dir": (store / "remote").as_uri(), "cache_dir": str(store / "cache"), "api_key": KEY,
        "enable_adapter_loading": True, "allowed_dirs": str(store / "allowed"),
    })
    assert config.adapters_dir.startswith("file://")
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build(config), name=config.app_name, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(url + "/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()


def _chat(url: str, model: str, prompt: str = PROMPT, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": N,
        **extra})


def _replicas(url: str) -> list[dict]:
    return httpx.get(url + "/health", timeout=30).json()["replicas"]


@pytest.mark.real_weights
def test_two_replicas_on_two_nodes_answer_as_the_engine_alone(server, oracle):
    rows = _replicas(server)
    assert len(rows) == 2 and len({r["node"] for r in rows}) == 2  # one replica per one-CPU node
    for model in ("base", "math_specialist", "pirate_style"):
        want = oracle(PROMPT, None if model == "base" else model)
        got = _chat(server, model)
        assert got.status_code == 200, got.text
        assert got.json()["choices"][0]["message"]["content"] == want
        assert got.headers["x-adaptrix-replica"] in {r["id"] for r in rows}
        streamed = _chat(server, model, stream=True)
        assert streamed.headers["x-adaptrix-replica"] in {r["id"] for r in rows}
        pieces = [line for line in streamed.text.splitlines() if line.startswith("data: {")]
        import json

        text = "".join(json.loads(p[6:])["choices"][0]["delta"].get("content") or "" for p in pieces)
        assert text == want
    assert oracle(PROMPT) != oracle(PROMPT, "pirate_style")


@pytest.mark.real_weights
def test_concurrent_clients_get_the_engine_alone_answers_and_base_requests_spread(server, oracle):
    jobs = [(PROMPT, "base"), (PROMPT, "math_specialist"), ("Tell me about the sea.", "pirate_style"),
            ("Name three colors.", "base"), ("Say hello.", "base"), ("Count to three.", "base")]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _chat(server, job[1], job[0]), jobs))
    for (prompt, model), answer in zip(jobs, answers):
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == oracle(prompt, None if model == "base" else model)
    base = {a.headers["x-adaptrix-replica"] for (_, model), a in zip(jobs, answers) if model == "base"}
    assert len(base) == 2, base  # base-model requests are not pinned to one replica


@pytest.mark.real_weights
def test_the_fields_of_issues_17_and_18_pass_through_the_replicas(server, oracle):
    """Structured output, a streamed forced tool call, logit_bias (a bad id is a 400 from the replica), n and
    logprobs: the ingress forwards the validated request whole, so what one process serves, Ray serves."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    out = _chat(server, "math_specialist", response_format={"type": "json_schema",
                                                            "json_schema": {"name": "n", "schema": schema}})
    assert out.status_code == 200, out.text
    jsonschema.validate(json.loads(out.json()["choices"][0]["message"]["content"]), schema)
    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
    streamed = _chat(server, "base", stream=True, tools=[tool], tool_choice="required", max_tokens=120)
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["function"]["name"] == "add" and deltas[0]["id"]
    jsonschema.validate(json.loads("".join(d["function"].get("arguments") or "" for d in deltas)),
                        tool["function"]["parameters"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    bad = _chat(server, "base", logit_bias={"99999999": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logit_bias", bad.text
    two = _chat(server, "base", n=2, logprobs=True, top_logprobs=2).json()
    assert [c["message"]["content"] for c in two["choices"]] == [oracle(PROMPT)] * 2
    assert all(len(c["logprobs"]["content"]) == two["usage"]["completion_tokens"] // 2 for c in two["choices"])


@pytest.mark.real_weights
def test_an_adapter_sticks_to_the_replica_that_holds_it(server):
    for model in ("math_specialist", "pirate_style"):
        served = {_chat(server, model, max_tokens=2).headers["x-adaptrix-replica"] for _ in range(4)}
        assert len(served) == 1, (model, served)
        (replica,) = served
        holding = {r["id"]: r["adapters"] for r in _replicas(server)}
        assert holding[replica] == [model]  # max_adapters_per_replica=1: the LRU kept only this one


def test_every_route_but_health_and_the_page_needs_the_key(server):
    assert httpx.get(server + "/health").status_code == 200
    assert httpx.get(server + "/").status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions")):
        answer = httpx.request(method, server + path, json={})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(server + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    models = httpx.get(server + "/v1/models", headers=AUTH).json()["data"]
    assert {m["id"] for m in models} >= {"math_specialist", "pirate_style"}
    bad = _chat(server, "no_such_adapter")
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"


@pytest.mark.real_weights
def test_runtime_load_and_unload_act_on_every_replica(server, store, oracle):
    path = str(store / "allowed" / "pirate_copy")
    loaded = httpx.post(server + "/v1/load_lora_adapter", headers=AUTH, timeout=120,
                        json={"lora_name": "pirate_copy", "lora_path": path})
    assert loaded.status_code == 200, loaded.text
    assert all("pirate_copy" in r["loaded"] for r in _replicas(server))
    answer = _chat(server, "pirate_copy")
    assert answer.json()["choices"][0]["message"]["content"] == oracle(PROMPT, "pirate_style")
    refused = httpx.post(server + "/v1/load_lora_adapter", headers=AUTH, timeout=120,
                         json={"lora_name": "pickled", "lora_path": str(store / "allowed" / "pickled")})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "pickle_refused", refused.text
    outside = httpx.post(server + "/v1/load_lora_adapter", headers=AUTH,
                         json={"lora_name": "x", "lora_path": str(EXAMPLES / "pirate_style")})
    assert outside.status_code == 403
    gone = httpx.post(server + "/v1/unload_lora_adapter", headers=AUTH, timeout=120,
                      json={"lora_name": "pirate_copy"})
    assert gone.status_code == 200, gone.text
    assert not any("pirate_copy" in r["loaded"] or "pirate_copy" in r["adapters"] for r in _replicas(server))
    assert _chat(server, "pirate_copy").status_code == 404


@pytest.mark.real_weights
def test_metrics_keep_adaptrix_names_labelled_by_replica(server):
    _chat(server, "base", max_tokens=2)
    text = httpx.get(server + "/metrics", headers=AUTH).text
    ids = {r["id"] for r in _replicas(server)}
    samples = [line for line in text.splitlines() if line.startswith("adaptrix_requests_total{")]
    assert samples and {i for i in ids if any(f'replica="{i}"' in s for s in samples)}
    assert text.count("# TYPE adaptrix_requests_total counter") == 1


def _cancelled(url: str) -> float:
    text = httpx.get(url + "/metrics", headers=AUTH, timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("adaptrix_cancelled_requests_total{"))


@pytest.mark.real_weights
def test_a_client_gone_mid_stream_stops_its_generation_on_the_replica(server):
    before = _cancelled(server)
    body = {"model": "base", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", server + "/v1/completions", headers=AUTH, json=body, timeout=60) as answer:
        chunks = answer.iter_lines()
        assert next(chunks).startswith("data: ")  # it runs; then the client goes away
    deadline = time.monotonic() + 30
    while _cancelled(server) <= before:
        assert time.monotonic() < deadline, "the replica kept generating for a client that had gone"
        time.sleep(0.2)
    assert all(r["running"] == 0 for r in _replicas(server))


@pytest.mark.real_weights
def test_a_replica_killed_under_load_is_survived(server):
    """kill -9 of the replica running a request: that request gets an OpenAI-shaped 503, others succeed, Ray
    starts a new replica."""
    body = {"model": "base", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(httpx.post, server + "/v1/completions", headers=AUTH, json=body, timeout=120)
        deadline = time.monotonic() + 60
        while True:
            busy = [r for r in _replicas(server) if r.get("running")]
            if busy or long.done():
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert busy, long.result().text
        os.kill(busy[0]["pid"], signal.SIGKILL)
        answer = long.result()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "replica_unavailable"
    for _ in range(3):  # meanwhile, the other replica serves
        assert _chat(server, "base", max_tokens=2).status_code == 200
    deadline = time.monotonic() + 120
    while True:
        health = httpx.get(server + "/health", timeout=30).json()
        pids = {r.get("pid") for r in health["replicas"]}
        if health["replica_states"].get("RUNNING") == 2 and len(pids) == 2 and busy[0]["pid"] not in pids:
            break
        assert time.monotonic() < deadline, health
        time.sleep(1)


@pytest.mark.real_weights
def test_adaptrix_serve_replicas_leaves_no_ray_process(tmp_path, oracle):
    """``adaptrix serve --replicas 1``: a local cluster on 127.0.0.1, the same API, nothing left after Ctrl-C."""
    dist = make_dist(tmp_path / "dist", "adaptrix-ray", {"ray": "adaptrix_ray"})  # as `pip install` registers it
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{dist}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "RAY_TMPDIR": temp,
           "RAY_USAGE_STATS_ENABLED": "0"}
    cli = subprocess.Popen([sys.executable, "-m", "adaptrix.cli.main", "serve", "--replicas", "1", "--threads", "1",
                            "--backend", "llamacpp", "--port", str(port), "--adapters-dir", str(EXAMPLES),
                            "--max-adapters-per-replica", "1"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spawned: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 150
        while True:
            assert cli.poll() is None, cli.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.5)
        answer = _chat(url, "math_specialist")
        assert answer.status_code == 200 and answer.headers["x-adaptrix-replica"]
        assert answer.json()["choices"][0]["message"]["content"] == oracle(PROMPT, "math_specialist")
        spawned = _descendants(cli.pid)
        assert len(spawned) > 3  # gcs_server, raylet, the replicas...
        ss = shutil.which("ss")
        listening = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True).stdout.splitlines() if ss else []
        ours = [line for line in listening if any(f"pid={p}," in line for p in spawned)]
        # Every Ray listener is on 127.0.0.1 but one Ray Serve hard-codes: each replica's inter-deployment gRPC
        # server binds [::]:0 (ray/serve/_private/replica.py, Ray 2.60); docs/scale-out.md says so.
        outward = [line for line in ours if "127.0.0.1" not in line.split()[3]
                   and "ray::ServeRepli" not in line]
        assert not outward and (ours or not ss), outward
    finally:
        spawned |= _descendants(cli.pid)
        cli.send_signal(signal.SIGINT)
        try:
            out = cli.communicate(timeout=90)[0]
        except subprocess.TimeoutExpired:
            cli.kill()
            out = cli.communicate()[0]
        left = _wait_gone(spawned)
        for pid in left:  # never leave them running, even when the test fails
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    assert cli.returncode == 0, out
    assert "stopping the local Ray cluster" in out
    assert not left, f"Ray processes left after adaptrix serve stopped: {sorted(left)}"
