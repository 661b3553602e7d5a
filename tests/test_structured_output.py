"""Structured output (issue 18): a grammar (``grammar=``, ``json_schema=``, ``response_format=``) is enforced on
both backends, on every path (generate, stream, batch, step decoder beside free rows, with an adapter), and a
schema the grammar engine cannot enforce is refused by name. The oracle is the ``jsonschema`` package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from adaptrix.errors import GenerationError  # noqa: E402
from adaptrix.generation.grammar import Grammar  # noqa: E402
from adaptrix.generation.request import GenerationRequest  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}
PROMPT = "Describe a person."
N = 80


def valid(text: str, schema=PERSON) -> dict:
    """The parsed output, checked against ``schema`` by jsonschema (the independent oracle)."""
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


# -- the mapping and the refusals (no model) ------------------------------------------------------------------
def test_response_format_maps_to_one_grammar():
    assert Grammar.from_response_format({"type": "text"}) is None
    assert Grammar.from_response_format({"type": "json_object"}) == Grammar.json_object()
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    assert Grammar.from_response_format(rf) == Grammar.json_schema(PERSON, "person")
    assert GenerationRequest.build("hi", response_format=rf).grammar == Grammar.json_schema(PERSON, "person")
    assert GenerationRequest.build("hi", json_schema=PERSON).grammar == Grammar.json_schema(PERSON)
    with pytest.raises(GenerationError, match="give one of them"):
        GenerationRequest.build("hi", json_schema=PERSON, grammar=Grammar.json_object())
    with pytest.raises(GenerationError, match="response_format.type"):
        GenerationRequest.build("hi", response_format={"type": "xml"})


def test_schema_order_is_kept():
    """Properties are written in the schema's order, so the Grammar keeps it."""
    schema = {"type": "object", "properties": {"z": {"type": "integer"}, "a": {"type": "integer"}}}
    assert list(Grammar.json_schema(schema).schema["properties"]) == ["z", "a"]


def test_unenforceable_keyword_is_named():
    from adaptrix.generation.matcher import check_grammar

    with pytest.raises(GenerationError, match="uniqueItems"):
        check_grammar(Grammar.json_schema({"type": "array", "uniqueItems": True}))
    with pytest.raises(GenerationError, match="unknown name"):
        check_grammar(Grammar.lark('start: "a" missing'))
    check_grammar(Grammar.json_schema(PERSON))  # enforceable: no error


def test_server_refuses_an_unenforceable_schema_with_400_naming_it():
    pytest.importorskip("starlette")
    from adaptrix.serve.errors import ApiError
    from adaptrix.serve.schemas import parse_completion

    body = {"messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
                                    "a": {"type": "object", "dependentRequired": {"b": ["c"]}}}}}}}
    with pytest.raises(ApiError) as err:
        parse_completion(body, "chat", ())
    assert err.value.status == 400 and "dependentRequired" in err.value.message
    assert err.value.param == "response_format.json_schema.schema"
    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}
    with pytest.raises(ApiError) as err:
        parse_completion(body, "chat", ())
    assert err.value.param == "response_format.json_schema.schema"
    body["response_format"] = {"type": "json_object"}
    assert parse_completion(body, "chat", ()).grammar == Grammar.json_object()
    body["response_format"] = {"type": "text"}
    assert parse_completion(body, "chat", ()).grammar is None


# -- both backends on the embedded SmolLM2 --------------------------------------------------------------------
@pytest.fixture
def llama(smollm2_llamacpp):
    """The session's llama.cpp engine on one thread while a test runs: llama.cpp's spinning threads are many
    times slower on two busy shared cores than one thread (see tests/test_serve_smollm2.py)."""
    runtime = smollm2_llamacpp.runner.runtime
    before = runtime.n_threads
    runtime.set_threads(1)
    yield smollm2_llamacpp
    runtime.set_threads(before)


@pytest.fixture(params=["transformers", "llamacpp"])
def engine(request):
    return request.getfixturevalue({"transformers": "smollm2_engine", "llamacpp": "llama"}[request.param])


@pytest.mark.real_weights
def test_generate_follows_the_schema_greedy_and_sampled(engine):
    greedy = engine.generate_detailed(PROMPT, json_schema=PERSON, temperature=0, max_new_tokens=N)
    valid(greedy.text)
    assert greedy.finish_reason == "eos"  # the grammar's end forces the end of the turn
    free = engine.generate(PROMPT, temperature=0, max_new_tokens=N)
    with pytest.raises(ValueError):  # the oracle holds: the same model, unconstrained, writes prose
        json.loads(free)
    for seed in (1, 2):
        valid(engine.generate(PROMPT, json_schema=PERSON, temperature=0.9, seed=seed, max_new_tokens=N))


@pytest.mark.real_weights
def test_stream_and_response_format(engine):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    pieces = list(engine.stream(PROMPT, response_format=rf, temperature=0, max_new_tokens=N))
    assert len(pieces) > 1
    valid("".join(pieces))
    obj = engine.generate("Describe a cat.", response_format={"type": "json_object"}, temperature=0,
                          max_new_tokens=N)
    assert isinstance(json.loads(obj), dict)


@pytest.mark.real_weights
def test_batch_rows_each_follow_their_grammar(engine):
    texts = engine.generate_batch([PROMPT, "Describe a pirate."], json_schema=PERSON, temperature=0,
                                  max_new_tokens=N)
    for text in texts:
        valid(text)


@pytest.mark.real_weights
def test_lark_grammar_with_tags_around_json(engine):
    call = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 15}}, "required": ["city"],
            "additionalProperties": False}
    grammar = Grammar.lark(f'start: "<tool_call>" call "</tool_call>"\ncall: %json{json.dumps(call)}')
    text = engine.generate("What is the weather in Paris?", grammar=grammar, temperature=0, max_new_tokens=N)
    assert text.startswith("<tool_call>") and text.endswith("</tool_call>")
    valid(text[len("<tool_call>"):-len("</tool_call>")], call)


@pytest.mark.real_weights
def test_with_an_adapter(engine):
    engine.load_adapter(str(EXAMPLES / "pirate_style"), name="grammar_pirate", activate=False)
    try:
        valid(engine.generate(PROMPT, adapter="grammar_pirate", json_schema=PERSON, temperature=0, max_new_tokens=N))
        valid("".join(engine.stream(PROMPT, adapter="grammar_pirate", json_schema=PERSON, temperature=0,
                                    max_new_tokens=N)))
    finally:
        engine.unload_adapter("grammar_pirate")


def _drain(decoder, rows):
    """Step ``rows`` to their end: ``{key: GenerationResult}``."""
    done, live = {}, list(rows)
    while live:
        decoder.step()
        for row in [r for r in live if r.finish_reason]:
            done[row.key] = decoder.finish(row)
            decoder.remove(row)
            live.remove(row)
    return done


@pytest.mark.real_weights
def test_step_decoder_constrained_row_beside_free_rows(engine):
    """A constrained row batched with free rows: it follows its schema, and each free row's answer is the one it
    gets alone (greedy)."""
    free_prompts = ["What is 25 times 8?", "Name three colours."]
    alone = [engine.generate(p, temperature=0, max_new_tokens=24) for p in free_prompts]
    decoder = engine.step_decoder(4)
    try:
        items = [("json", engine.prepare_request(PROMPT, json_schema=PERSON, temperature=0, max_new_tokens=N), None)]
        items += [(i, engine.prepare_request(p, temperature=0, max_new_tokens=24), None)
                  for i, p in enumerate(free_prompts)]
        added = decoder.add_many(items)
        for a in added:
            assert not isinstance(a, BaseException), a
        results = _drain(decoder, [row for row, _ in added])
    finally:
        decoder.close()
    valid(results["json"].text)
    assert [results[i].text for i in range(len(free_prompts))] == alone


@pytest.mark.real_weights
def test_step_decoder_refuses_an_unenforceable_schema_alone(engine):
    with pytest.raises(GenerationError, match="uniqueItems"):
        engine.prepare_request(PROMPT, json_schema={"type": "array", "uniqueItems": True})


@pytest.mark.real_weights
@pytest.mark.parametrize("batching", [True, False], ids=["step-decoder", "one-at-a-time"])
def test_server_response_format_streamed_and_not(llama, batching):
    """``response_format`` over HTTP on /v1/chat/completions and /v1/completions, streamed and not, through the
    step decoder and one request at a time: every answer validates; a bad schema is a 400 naming the keyword."""
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from support.server import LiveServer

    from adaptrix.serve.app import ServeOptions, create_app

    app = create_app(lambda: llama, ServeOptions(adapters_dir=str(EXAMPLES), max_batch=4,
                                                            batching="auto" if batching else "off"))
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    chat = {"model": "base", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": N,
            "response_format": rf}
    completion = {"model": "base", "prompt": "A person as JSON:", "temperature": 0, "max_tokens": N,
                  "response_format": rf}
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        answer = c.post("/v1/chat/completions", json=chat).json()
        valid(answer["choices"][0]["message"]["content"])
        assert answer["choices"][0]["finish_reason"] == "stop"
        valid(c.post("/v1/completions", json=completion).json()["choices"][0]["text"])
        for path, body, field in (("/v1/chat/completions", chat, "content"), ("/v1/completions", completion, "text")):
            text = ""
            with c.stream("POST", path, json=dict(body, stream=True)) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        text += (choice.get("delta", {}).get(field) if field == "content" else choice["text"]) or ""
            valid(text)
        bad = dict(chat, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "array", "uniqueItems": True}}})
        refused = c.post("/v1/chat/completions", json=bad)
        assert refused.status_code == 400 and "uniqueItems" in refused.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json=chat).status_code == 200  # and it keeps serving


# -- the CLI -----------------------------------------------------------------------------------------------
def test_cli_json_schema_file_errors_name_the_file(tmp_path, capsys, monkeypatch):
    from adaptrix.cli import generate_cmd
    from adaptrix.cli.main import main

    monkeypatch.setattr(generate_cmd, "make_engine", lambda args: pytest.fail("the model loaded before the check"))
    missing = tmp_path / "missing.json"
    assert main(["generate", "--json-schema", str(missing), "Hi"]) == 2
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["generate", "--json-schema", str(bad), "Hi"]) == 2
    assert "bad.json is not JSON" in capsys.readouterr().err
    unique = tmp_path / "unique.json"
    unique.write_text(json.dumps({"type": "array", "uniqueItems": True}))
    assert main(["generate", "--json-schema", str(unique), "Hi"]) == 2
    assert "uniqueItems" in capsys.readouterr().err


@pytest.mark.real_weights
def test_cli_generate_and_chat_with_json_schema(tmp_path, capsys, monkeypatch, llama):
    from adaptrix.cli import chat_cmd, generate_cmd
    from adaptrix.cli.main import main

    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    # the session's loaded model stands in for a fresh load (cleanup() would unload it: the fixture's own)
    monkeypatch.setattr(llama, "cleanup", lambda: None)
    monkeypatch.setattr(generate_cmd, "make_engine", lambda args: llama)
    monkeypatch.setattr(chat_cmd, "make_engine", lambda args: llama)
    assert main(["generate", "--json-schema", str(schema), "--temperature", "0", "-n", str(N), PROMPT]) == 0
    valid(capsys.readouterr().out.strip())
    assert main(["generate", "--json-object", "--no-stream", "--temperature", "0", "-n", str(N), "A cat."]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), dict)
    lines = iter([PROMPT, "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    monkeypatch.setattr(llama, "use_context_by_default", False)  # chat sets it; restored after
    try:
        assert main(["chat", "--json-schema", str(schema), "--temperature", "0", "-n", str(N)]) == 0
    finally:
        llama.reset_context()
    answer = capsys.readouterr().out.split("assistant> ", 1)[1].splitlines()[0]
    valid(answer.strip())


@pytest.mark.real_weights
def test_llamacpp_constrained_decoding_imports_no_torch(embedded_gguf):
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    code = (
        "import json, sys\nfrom adaptrix import Engine\n"
        "e = Engine(backend='llamacpp', progress=False, threads=1); e.initialize()\n"
        f"text = e.generate({PROMPT!r}, json_schema={PERSON!r}, temperature=0, max_new_tokens={N})\n"
        "json.loads(text)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.real_weights
def test_playground_schema_box(llama, tmp_path):
    """The playground's JSON-schema box sends response_format: both columns answer with valid JSON."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("starlette")
    from support.server import LiveServer

    from adaptrix.serve.app import ServeOptions, create_app

    app = create_app(lambda: llama, ServeOptions(adapters_dir=str(EXAMPLES)))
    llama.load_adapter(str(EXAMPLES / "math_specialist"), name="math_specialist", activate=False)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    with LiveServer(app) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=flags, headless=True)
        try:
            page = browser.new_page()
            logs = []
            page.on("console", lambda m: logs.append(m.text))
            page.on("pageerror", lambda e: logs.append(str(e)))
            page.goto(srv.url + "/")
            page.wait_for_selector("#models input[value='math_specialist']")
            page.fill("#prompt", PROMPT)
            page.fill("#max", str(N))
            page.check("#models input[value='base']")
            page.check("#models input[value='math_specialist']")
            page.select_option("#rformat", "json_schema")
            page.fill("#schema", "{not json")
            page.click("#run")
            assert "not JSON" in page.inner_text("#columns .err")
            page.fill("#schema", json.dumps(PERSON))
            page.click("#run")
            try:
                page.wait_for_function("document.querySelectorAll('.col[data-done]').length == 2", timeout=120_000)
            except Exception:
                raise AssertionError(page.inner_html("#columns") + str(logs)) from None
            for model in ("base", "math_specialist"):
                valid(page.inner_text(f".col[data-model='{model}'] .out").strip())
        finally:
            browser.close()
            llama.unload_adapter("math_specialist")


def test_row_matcher_masks_and_forces_the_end():
    """On a toy vocabulary: the mask allows what the grammar allows; once complete, only the end token is left."""
    from adaptrix.generation.matcher import GrammarCompiler, TokenVocabulary

    pieces = {b"{": 1, b"}": 2, b"a": 3, b'"': 4, b":": 5, b" ": 6}

    def tokenize(data: bytes) -> list[int]:
        return [pieces.get(bytes([c]), 3) for c in data]

    vocab = TokenVocabulary(n_vocab=8, eos_ids=(0,), tokens=(b"\xff<eos>", b"{", b"}", b"a", b'"', b":", b" "),
                            tokenize=tokenize)
    matcher = GrammarCompiler(vocab).matcher(Grammar.json_object())
    assert [t for t in range(8) if not matcher.blocked()[t]] == [1]  # an object starts with '{'; 7 is padding
    matcher.accept(1)
    assert not matcher.blocked()[2] and matcher.blocked()[3] and matcher.blocked()[0]
    matcher.accept(2)
    assert matcher.done and [t for t in range(8) if not matcher.blocked()[t]] == [0]
    with pytest.raises(GenerationError, match="breaks the row's grammar"):
        GrammarCompiler(vocab).matcher(Grammar.json_object()).accept(3)
