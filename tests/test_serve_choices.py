"""``adaptrix serve`` on the embedded SmolLM2, both backends: logit_bias and OpenAI's penalties, ``n`` choices,
``GET /v1/models/{id}``.

Oracles: the library's answer to the same request alone (itself checked against the raw logits in
tests/test_logit_rules.py), and OpenAI's shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from support.server import LiveServer  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"
PROMPT = "List the numbers from one to ten, separated by commas."
RAW = dict(raw=True, trim=False, show_thinking=True)  # what /v1/completions asks of the engine


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def world(request, tmp_path_factory):
    """``(server, engine)``: ``adaptrix serve`` (batching on, adapter loading on) around the session's engine."""
    from adaptrix.serve.app import ServeOptions, create_app

    engine = request.getfixturevalue("smollm2_engine" if request.param == "transformers" else "smollm2_llamacpp")
    extra = tmp_path_factory.mktemp("extra")
    shutil.copytree(EXAMPLES / "pirate_style", extra / "pirate_copy")
    app = create_app(lambda: engine, ServeOptions(adapters_dir=str(EXAMPLES), enable_adapter_loading=True,
                                                 allowed_dirs=(str(extra),)))
    with LiveServer(app) as srv:
        srv.extra = extra
        yield srv, engine


def _post(server, path, body, status=200):
    r = httpx.post(server.url + path, json={"model": "base", **body}, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def _stream(server, path, body):
    chunks = []
    with httpx.stream("POST", server.url + path, json={"model": "base", "stream": True, **body}, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


# -- logit_bias, presence_penalty, frequency_penalty --------------------------------------------------------


def test_penalties_on_both_endpoints_answer_as_the_library_does(world):
    server, engine = world
    pen = dict(presence_penalty=0.7, frequency_penalty=1.3)
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    plain = _post(server, "/v1/completions", body)["choices"][0]["text"]
    got = _post(server, "/v1/completions", {**body, **pen})["choices"][0]["text"]
    assert got == engine.generate_detailed(PROMPT, temperature=0, max_new_tokens=16, **RAW, **pen).text != plain
    ask = "Repeat the word 'cat' five times."
    chat = {"messages": [{"role": "user", "content": ask}], "max_tokens": 16, "temperature": 0}
    plain = _post(server, "/v1/chat/completions", chat)["choices"][0]["message"]["content"]
    got = _post(server, "/v1/chat/completions", {**chat, **pen})["choices"][0]["message"]["content"]
    assert got == engine.generate(ask, temperature=0, max_new_tokens=16, **pen) != plain


def test_logit_bias_with_string_keys_bans_and_forces_tokens(world):
    server, engine = world
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    first = engine.generate_detailed(PROMPT, temperature=0, max_new_tokens=1, **RAW).token_ids[0]
    banned = _post(server, "/v1/completions", {**body, "logit_bias": {str(first): -100}})["choices"][0]["text"]
    expected = engine.generate_detailed(PROMPT, temperature=0, max_new_tokens=4, logit_bias={first: -100}, **RAW)
    assert banned == expected.text and expected.token_ids[0] != first
    forced = _post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                                    "temperature": 1.0, "seed": 3, "logit_bias": {"42": 100}})
    assert forced["choices"][0]["message"]["content"] == engine.tokenizer.decode([42, 42, 42])
    assert forced["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("body, param, needle", [
    ({"logit_bias": {"99999999": 1}}, "logit_bias", "99999999"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "abc"),
    ({"logit_bias": {"5": -101}}, "logit_bias", "-101"),
    ({"logit_bias": [5]}, "logit_bias", "object"),
    ({"frequency_penalty": -2.5}, "frequency_penalty", "-2.5"),
    ({"presence_penalty": "high"}, "presence_penalty", "high"),
    ({"n": 9}, "n", "9"),
    ({"n": 0}, "n", "0"),
])
def test_bad_bias_penalty_and_n_are_400s_naming_the_field(world, body, param, needle):
    server, _ = world
    for path, base in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        err = _post(server, path, {**base, **body}, 400)["error"]
        assert err["param"] == param and needle in err["message"], err


# -- n ----------------------------------------------------------------------------------------------------


def test_n_greedy_choices_are_equal_and_usage_counts_every_choice(world):
    server, _ = world
    chat = {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8, "temperature": 0}
    one = _post(server, "/v1/chat/completions", chat)
    three = _post(server, "/v1/chat/completions", {**chat, "n": 3})
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in three["choices"]} == {one["choices"][0]["message"]["content"]}
    usage = three["usage"]
    assert usage["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_sampled_choice_j_is_the_request_seeded_seed_plus_j(world):
    server, _ = world
    chat = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12, "temperature": 1.0}
    many = _post(server, "/v1/chat/completions", {**chat, "n": 4, "seed": 11})["choices"]
    alone = [_post(server, "/v1/chat/completions", {**chat, "seed": 11 + j})["choices"][0] for j in range(4)]
    assert [c["message"]["content"] for c in many] == [c["message"]["content"] for c in alone]
    assert len({c["message"]["content"] for c in many}) > 1, "each choice samples on its own"


def test_n_streamed_chunks_carry_their_index_and_rebuild_each_choice(world):
    server, _ = world
    chat = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 10, "temperature": 1.0,
            "seed": 5, "n": 3}
    whole = _post(server, "/v1/chat/completions", chat)
    chunks = _stream(server, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}})
    texts, finishes, roles = ["", "", ""], [None] * 3, [0, 0, 0]
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content") or ""
        roles[choice["index"]] += choice["delta"].get("role") == "assistant"
        finishes[choice["index"]] = choice["finish_reason"] or finishes[choice["index"]]
    assert texts == [c["message"]["content"] for c in whole["choices"]]
    assert finishes == [c["finish_reason"] for c in whole["choices"]] and roles == [1, 1, 1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_n_streamed_completions_echo_each_choices_prompt(world):
    """Batched, and one request at a time (where choice 1 starts only once choice 0 has ended)."""
    from adaptrix.serve.app import ServeOptions, create_app

    server, engine = world
    body = {"prompt": PROMPT, "max_tokens": 5, "temperature": 1.0, "seed": 9, "n": 3, "echo": True}
    whole = _post(server, "/v1/completions", body)["choices"]
    with LiveServer(create_app(lambda: engine, ServeOptions(batching="off"))) as serial:
        for srv in (server, serial):
            texts = ["", "", ""]
            for chunk in _stream(srv, "/v1/completions", body):
                (choice,) = chunk["choices"]
                texts[choice["index"]] += choice["text"]
            assert texts == [c["text"] for c in whole] and all(t.startswith(PROMPT) for t in texts)


def test_n_on_completions_with_several_prompts_orders_choices_prompt_major(world):
    server, _ = world
    body = {"prompt": ["The sky is", "Apples are"], "max_tokens": 6, "temperature": 1.0, "seed": 2, "n": 2}
    out = _post(server, "/v1/completions", body)["choices"]
    assert [c["index"] for c in out] == [0, 1, 2, 3]
    for i, prompt in enumerate(body["prompt"]):
        for j in range(2):
            alone = _post(server, "/v1/completions", {**body, "prompt": prompt, "n": 1, "seed": 2 + j})
            assert out[2 * i + j]["text"] == alone["choices"][0]["text"]


def test_the_openai_client_gets_n_choices(world):
    server, _ = world
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    out = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], n=2,
                                         max_tokens=4, temperature=0)
    assert len(out.choices) == 2 and out.choices[0].message.content == out.choices[1].message.content


# -- GET /v1/models/{id} ------------------------------------------------------------------------------------


def test_retrieve_a_model_by_id_base_adapter_and_runtime_loaded(world):
    server, _ = world
    listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    base_id = next(m["id"] for m in listed.values() if m["parent"] is None)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    for wanted, expected in ((base_id, base_id), ("base", base_id), ("math_specialist", "math_specialist")):
        got = httpx.get(f"{server.url}/v1/models/{wanted}").json()
        assert got == listed[expected]
        assert client.models.retrieve(wanted).id == expected
    assert httpx.post(server.url + "/v1/load_lora_adapter", timeout=300, json={
        "lora_name": "rt", "lora_path": str(server.extra / "pirate_copy")}).status_code == 200
    try:
        got = httpx.get(server.url + "/v1/models/rt").json()
        assert got["id"] == "rt" and got["object"] == "model" and got["adaptrix"]["loaded_at_runtime"] is True
    finally:
        httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "rt"}, timeout=300)
    r = httpx.get(server.url + "/v1/models/rt")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
