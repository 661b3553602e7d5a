"""What evaluation clients send to ``adaptrix serve`` (issue 17 item 2), on the embedded SmolLM2 (transformers).

The oracle: raw transformers on the same float32 weights (the engine's converted folder), greedy
``generate`` and ``log_softmax`` of one unpadded forward pass; nothing of adaptrix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")

from support.server import LiveServer  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"
TOL = 1e-4
PROMPTS = ["The capital of France is", "def add(a, b):\n    "]


@pytest.fixture(scope="module", params=["auto", "off"])
def server(request, smollm2_engine):
    """``adaptrix serve`` around the session's SmolLM2: batched (``auto``) and one request at a time (``off``)."""
    from adaptrix.serve.app import ServeOptions, create_app

    app = create_app(lambda: smollm2_engine, ServeOptions(adapters_dir=str(EXAMPLES), batching=request.param))
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def raw(smollm2_engine):
    """Raw transformers on the engine's weights: ``greedy(ids, n) -> new ids``, ``logprobs(ids) -> (n, vocab)``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_engine.get_model_info()["source"],
                                                 torch_dtype=torch.float32).eval()

    class Raw:
        tok = smollm2_engine.tokenizer

        @staticmethod
        def greedy(ids, n):
            with torch.no_grad():
                out = model.generate(torch.tensor([list(ids)]), max_new_tokens=n, do_sample=False,
                                     pad_token_id=Raw.tok.eos_token_id)
            return out[0, len(ids):].tolist()

        @staticmethod
        def logprobs(ids):
            with torch.no_grad():
                return torch.log_softmax(model(torch.tensor([list(ids)])).logits[0].float(), dim=-1)

    return Raw


def _post(srv, path, body, status=200):
    r = httpx.post(srv.url + path, json=body, timeout=120)
    assert r.status_code == status, r.text
    return r.json()


def test_completion_text_is_exactly_what_the_model_produced(server, raw):
    """No whitespace trimmed: ``prompt + text`` is the decoded prompt + generation (leading space and
    newline of an indented code line kept)."""
    for prompt in PROMPTS:
        out = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        ids = raw.tok(prompt)["input_ids"]
        expected = raw.tok.decode(ids + raw.greedy(ids, 8), skip_special_tokens=True)
        assert prompt + out["choices"][0]["text"] == expected
    assert _post(server, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 4,
                                             "temperature": 0})["choices"][0]["text"].startswith(" Paris")


def test_four_prompt_forms_give_one_choice_per_prompt_in_order(server, raw):
    ids = [raw.tok(p)["input_ids"] for p in PROMPTS]
    want = [raw.tok.decode(raw.greedy(i, 6), skip_special_tokens=True) for i in ids]
    for prompt in (PROMPTS, ids):
        out = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0})
        assert [c["index"] for c in out["choices"]] == [0, 1]
        assert [c["text"] for c in out["choices"]] == want
        assert out["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])
    for prompt in (PROMPTS[1], ids[1], [ids[1]]):
        out = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0})
        assert [c["text"] for c in out["choices"]] == [want[1]]


def test_echo_logprobs_max_tokens_0_scores_the_prompt(server, raw):
    ids = raw.tok(PROMPTS[0])["input_ids"]
    lp = raw.logprobs(ids)
    for prompt in (PROMPTS[0], ids):
        out = _post(server, "/v1/completions", {"prompt": prompt, "echo": True, "logprobs": 2, "max_tokens": 0})
        choice = out["choices"][0]
        assert choice["text"] == PROMPTS[0]
        got = choice["logprobs"]
        assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
        assert len(got["tokens"]) == len(ids) and "".join(got["tokens"]) == PROMPTS[0]
        for i in range(1, len(ids)):
            assert abs(got["token_logprobs"][i] - lp[i - 1, ids[i]].item()) < TOL
            best = lp[i - 1].topk(2)
            assert max(got["top_logprobs"][i].values()) == pytest.approx(best.values[0].item(), abs=TOL)
        assert got["text_offset"][:2] == [0, len(got["tokens"][0])]
        assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}


def test_lm_eval_loglikelihood_request_parses_to_the_raw_score(server, raw):
    """lm-eval's own request (ids, echo, logprobs 1, max_tokens 1) and parser give the raw model's
    log-likelihood and greedy flag of each continuation."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " a banana")]
    rows, ctxlens, want = [], [], []
    for ctx, cont in pairs:
        c, whole = raw.tok(ctx)["input_ids"], raw.tok(ctx + cont)["input_ids"]
        lp = raw.logprobs(whole)
        cont_ids = whole[len(c):]
        want.append((sum(lp[len(c) + i - 1, t].item() for i, t in enumerate(cont_ids)),
                     all(int(lp[len(c) + i - 1].argmax()) == t for i, t in enumerate(cont_ids))))
        rows.append(whole)
        ctxlens.append(len(c))
    class Client:  # what the payload reads of the client
        model = "base"

    payload = LocalCompletionsAPI._create_payload(Client(), rows, generate=False)
    got = LocalCompletionsAPI.parse_logprobs(_post(server, "/v1/completions", payload), rows, ctxlens)
    for (lp, greedy), (want_lp, want_greedy) in zip(got, want):
        assert abs(lp - want_lp) < TOL and greedy == want_greedy
    assert [g for _, g in got] == [True, False]


def test_generation_logprobs_are_the_raw_models(server, raw):
    ids = raw.tok(PROMPTS[0])["input_ids"]
    new = raw.greedy(ids, 5)
    lp = raw.logprobs(ids + new)
    out = _post(server, "/v1/completions", {"prompt": PROMPTS[0], "logprobs": 3, "max_tokens": 5, "temperature": 0})
    got = out["choices"][0]["logprobs"]
    assert got["tokens"] == [raw.tok.decode([t]) for t in new]
    for i, t in enumerate(new):
        assert abs(got["token_logprobs"][i] - lp[len(ids) + i - 1, t].item()) < TOL
        assert len(got["top_logprobs"][i]) == 3  # greedy: the token is its own best alternative
    assert got["text_offset"][0] == 0 and "".join(got["tokens"]) == out["choices"][0]["text"]


def _chat_body(**kw):
    return {"model": "base", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0,
            "max_tokens": 6, **kw}


def test_chat_logprobs_streamed_and_not(server, smollm2_engine, raw):
    prepared = smollm2_engine.prepare_request("What is 2+2?", max_new_tokens=6)
    ids = list(prepared.input_ids)
    new = raw.greedy(ids, 6)
    lp = raw.logprobs(ids + new)
    out = _post(server, "/v1/chat/completions", _chat_body(logprobs=True, top_logprobs=3))
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"] == len(new)
    for i, (entry, t) in enumerate(zip(content, new)):
        assert entry["token"] == raw.tok.decode([t]) and entry["bytes"] == list(entry["token"].encode())
        assert abs(entry["logprob"] - lp[len(ids) + i - 1, t].item()) < TOL
        assert [a["logprob"] for a in entry["top_logprobs"]] == sorted((a["logprob"] for a in entry["top_logprobs"]),
                                                                        reverse=True)
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]
    streamed, text = [], ""
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=120,
                      json=_chat_body(logprobs=True, top_logprobs=3, stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                if choice["logprobs"]:
                    assert len(choice["logprobs"]["content"]) == 1  # one token per chunk
                    streamed += choice["logprobs"]["content"]
    assert streamed == content and text == out["choices"][0]["message"]["content"]
    plain = _post(server, "/v1/chat/completions", _chat_body())
    assert plain["choices"][0]["logprobs"] is None and plain["choices"][0]["message"] == out["choices"][0]["message"]


def test_streamed_completion_with_echo_and_logprobs(server):
    body = {"prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0, "logprobs": 1, "echo": True}
    whole = _post(server, "/v1/completions", body)["choices"][0]
    text, tokens, logprobs, offsets = "", [], [], []
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                if choice["logprobs"]:
                    tokens += choice["logprobs"]["tokens"]
                    logprobs += choice["logprobs"]["token_logprobs"]
                    offsets += choice["logprobs"]["text_offset"]
    assert text == whole["text"] and text.startswith(PROMPTS[0])
    assert tokens == whole["logprobs"]["tokens"] and logprobs == whole["logprobs"]["token_logprobs"]
    assert offsets == whole["logprobs"]["text_offset"]


def test_stop_takes_many_strings(server):
    body = {"prompt": "Paris is the capital of", "max_tokens": 8, "temperature": 0}
    free = _post(server, "/v1/completions", body)["choices"][0]["text"]
    assert "." in free
    out = _post(server, "/v1/completions", {**body, "stop": [f"never{i}" for i in range(20)] + ["."]})
    assert out["choices"][0]["text"] == free.split(".")[0] and out["choices"][0]["finish_reason"] == "stop"
    err = _post(server, "/v1/completions", {"prompt": "x", "stop": [f"s{i}" for i in range(33)]}, 400)
    assert err["error"]["param"] == "stop" and "32" in err["error"]["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/v1/completions", {"prompt": "x", "best_of": 2}, "best_of"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"1": 500}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999999": 5}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "n": 9}, "n"),
    ("/v1/completions", {"prompt": "x", "messages": []}, "messages"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
    ("/v1/completions", {"prompt": ["a", "b"], "stream": True}, "stream"),
    ("/v1/completions", {"prompt": [1, 99999999]}, "prompt"),
    ("/v1/completions", {"prompt": [[1], [2, 99999999]]}, "prompt[1]"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                              "top_logprobs": 21}, "top_logprobs"),
    ("/detokenize", {"tokens": [1, -2]}, "tokens"),
    ("/tokenize", {"prompt": 5}, "prompt"),
])
def test_what_cannot_be_served_is_a_400_naming_the_field(server, path, body, param):
    err = _post(server, path, {"model": "base", **body}, 400)["error"]
    assert err["param"] == param and param in err["message"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_tokenizer_routes_in_vllms_shapes(server, smollm2_engine):
    tok = smollm2_engine.tokenizer
    text = "Hello world, 2+2=4"
    for model in ("base", "math_specialist", None):
        body = {"prompt": text, "add_special_tokens": False, "return_token_strs": True}
        out = _post(server, "/tokenize", body if model is None else {**body, "model": model})
        assert out["tokens"] == tok(text, add_special_tokens=False)["input_ids"]
        assert out["count"] == len(out["tokens"]) and out["max_model_len"] == 8192
        assert out["token_strs"] == tok.convert_ids_to_tokens(out["tokens"])
        assert _post(server, "/detokenize", {"tokens": out["tokens"]})["prompt"] == text
    assert _post(server, "/tokenize", {"model": "nope", "prompt": "x"}, 404)["error"]["param"] == "model"
    chat = _post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert chat["tokens"] == list(smollm2_engine.prepare_request("hi").input_ids)
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    assert info["tokenizer_class"] and info["model_max_length"] == 8192


def test_lm_eval_remote_tokenizer_works_against_the_server(server, smollm2_engine):
    """lm-eval's own RemoteTokenizer (what ``tokenizer_backend=remote`` and ``auto`` use)."""
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    url = server.url + "/v1/completions"
    assert check_remote_tokenizer_support(url)
    remote = RemoteTokenizer(url)
    tok = smollm2_engine.tokenizer
    assert remote.encode("The capital of France") == tok("The capital of France", add_special_tokens=False)["input_ids"]
    assert remote.eos_token_id == tok.eos_token_id
    assert remote.decode([504, 3575]) == tok.decode([504, 3575])
