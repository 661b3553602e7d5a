"""A streamed request with logprobs streams as it generates (issue 17): one chunk per token, with that token's
logprob and alternatives, on both backends and in both scheduling modes.

The oracle (:func:`_oracle`): each token's raw logprob, not from the server: on transformers the engine's scoring
of the greedy answer (one fresh pass), on llama.cpp raw llama.cpp's per-step logits.
"""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from support.server import LiveServer  # noqa: E402

TOL = 1e-4
PROMPT = "The capital of France is"
N = 12


@pytest.fixture(scope="module", params=[("transformers", "auto"), ("transformers", "off"),
                                        ("llamacpp", "auto"), ("llamacpp", "off")], ids=lambda p: "-".join(p))
def served(request):
    """``(server, engine, gguf)``: ``adaptrix serve`` around the session's SmolLM2 on a backend, in a scheduling mode."""
    from adaptrix.serve.app import ServeOptions, create_app

    backend, batching = request.param
    engine = request.getfixturevalue("smollm2_engine" if backend == "transformers" else "smollm2_llamacpp")
    gguf = request.getfixturevalue("embedded_gguf") if backend == "llamacpp" else None
    with LiveServer(create_app(lambda: engine, ServeOptions(batching=batching))) as srv:
        yield srv, engine, gguf


def _sse(srv, path, body):
    """The ``choices[0]`` of each chunk of a streamed answer."""
    out = []
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:])["choices"][0])
    return out


def _oracle(served, ids, n, top):
    """Per generated token of the greedy answer: ``(text, logprob, [(text, logprob)] * top)``, independently of
    the server. transformers: ``Engine.token_logprobs`` (one float32 pass over prompt + answer, which equals the
    per-step logits within 1e-6); llama.cpp: raw llama.cpp's own per-step logits (:class:`RawLlama`), since its
    one-token decodes use another matmul kernel than a whole pass (measured: up to 0.07 apart on the Q4 model)."""
    srv, engine, gguf = served
    piece = lambda t: engine.tokenizer.decode([int(t)], skip_special_tokens=False)  # noqa: E731
    if gguf is None:
        new = list(engine.generate_detailed(list(ids), raw=True, trim=False, temperature=0,
                                            max_new_tokens=n).token_ids)
        scored = engine.token_logprobs(list(ids) + new, start=len(ids), top=top)
        return [(t.text, t.logprob, [(text, v) for _, text, v in t.top]) for t in scored]
    from support.llamacpp import RawLlama

    with RawLlama(gguf, n_ctx=512) as raw:
        new, lp = raw.greedy_logprobs(list(ids), n)
    eos = set(engine.prepare_request("x").eos_ids)
    if eos & set(new):
        new = new[: min(i for i, t in enumerate(new) if t in eos) + 1]
    return [(piece(t), float(lp[i, t]), [(piece(a), float(lp[i, a])) for a in lp[i].argsort()[::-1][:top]])
            for i, t in enumerate(new)]


def test_streamed_completion_sends_each_token_with_the_oracles_logprob(served):
    srv, engine, _ = served
    ids = engine.tokenizer(PROMPT)["input_ids"]
    body = {"prompt": ids, "max_tokens": N, "temperature": 0, "logprobs": 3}
    chunks = _sse(srv, "/v1/completions", body)
    scored = [c["logprobs"] for c in chunks if c["logprobs"]]
    want = _oracle(served, ids, N, 3)
    assert len(scored) == len(want)  # one chunk per generated token
    assert all(len(lp["tokens"]) == 1 for lp in scored)
    assert [lp["tokens"][0] for lp in scored] == [text for text, _, _ in want]
    for lp, (_, value, top) in zip(scored, want):
        assert abs(lp["token_logprobs"][0] - value) < TOL
        got = lp["top_logprobs"][0]
        assert len(got) >= 3 and all(abs(got[text] - v) < TOL for text, v in top)
    whole = httpx.post(srv.url + "/v1/completions", json=body, timeout=120).json()["choices"][0]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert [lp["tokens"][0] for lp in scored] == whole["logprobs"]["tokens"]
    assert max(abs(lp["token_logprobs"][0] - w) for lp, w in zip(scored, whole["logprobs"]["token_logprobs"])) < TOL
    assert [lp["text_offset"][0] for lp in scored] == whole["logprobs"]["text_offset"]


def test_streamed_chat_sends_each_token_with_the_oracles_logprob(served):
    srv, engine, _ = served
    body = {"model": "base", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0,
            "max_tokens": N, "logprobs": True, "top_logprobs": 2}
    chunks = _sse(srv, "/v1/chat/completions", body)
    scored = [c["logprobs"]["content"] for c in chunks if c["logprobs"]]
    assert all(len(entries) == 1 for entries in scored)
    ids = engine.prepare_request("What is 2+2?", max_new_tokens=N).input_ids
    want = _oracle(served, ids, N, 2)
    assert len(scored) == len(want)
    for (entry,), (text, value, top) in zip(scored, want):
        assert entry["token"] == text and abs(entry["logprob"] - value) < TOL
        assert [a["token"] for a in entry["top_logprobs"]] == [t for t, _ in top]


def _metric(srv, name: str, **labels) -> float:
    return sum(float(line.split()[-1]) for line in httpx.get(srv.url + "/metrics").text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_the_first_logprob_arrives_while_the_generation_runs(served):
    """A client that reads the first token's chunk and hangs up stops the generation: the chunk came before
    the end (a stream scored after its generation would have run all ``max_tokens`` and finished ``ok``)."""
    srv, engine, _ = served
    eos = engine.prepare_request("x").eos_ids
    body = {"prompt": PROMPT, "max_tokens": 400, "temperature": 0, "logprobs": 1, "stream": True,
            "logit_bias": {str(t): -100 for t in eos}}
    ok = _metric(srv, "adaptrix_requests_total", endpoint="completion", status="ok")
    cancelled = _metric(srv, "adaptrix_cancelled_requests_total")
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["logprobs"]:
                break  # the first token with its logprob: hang up
    for _ in range(600):
        if _metric(srv, "adaptrix_cancelled_requests_total") > cancelled or _metric(
                srv, "adaptrix_requests_total", endpoint="completion", status="ok") > ok:
            break
        threading.Event().wait(0.05)
    assert _metric(srv, "adaptrix_cancelled_requests_total") == cancelled + 1
    assert _metric(srv, "adaptrix_requests_total", endpoint="completion", status="ok") == ok


ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


def test_a_streamed_tool_call_sends_every_tokens_logprob(served):
    """The tokens of a call's text stream with no content: their logprobs go with the call's deltas, none lost."""
    srv = served[0]
    body = {"model": "base", "messages": [{"role": "user", "content": "Add 2 and 3."}], "tools": [ADD],
            "tool_choice": "required", "max_tokens": 60, "temperature": 0, "logprobs": True}
    whole = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120).json()
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    chunks = _sse(srv, "/v1/chat/completions", body)
    streamed = [e for c in chunks if c["logprobs"] for e in c["logprobs"]["content"]]
    assert any(c["logprobs"] and c["delta"].get("tool_calls") for c in chunks)
    assert [e["token"] for e in streamed] == [e["token"] for e in whole["choices"][0]["logprobs"]["content"]]
    assert len(streamed) == whole["usage"]["completion_tokens"]
