"""adaptrix compare on the embedded SmolLM2-135M-Instruct, both backends: base vs math_specialist on `math`."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest

from adaptrix.evaluation import runner

pytestmark = pytest.mark.real_weights
REPO = Path(__file__).resolve().parents[1]


def _examples_final_integer():
    """examples/math/evaluate.py's own scoring rule: an independent reading of the answers."""
    spec = importlib.util.spec_from_file_location("math_evaluate", REPO / "examples/math/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.final_integer


@pytest.mark.parametrize("fixture", ["smollm2_engine", "smollm2_llamacpp"])
def test_compare_math_on_both_backends(fixture, request, monkeypatch, tmp_path, capsys, one_thread):
    engine = request.getfixturevalue(fixture)
    backend = engine.get_model_info()["backend"]
    runtime = getattr(engine.runner, "runtime", None)
    if runtime is not None and hasattr(runtime, "set_threads"):  # llama.cpp: one thread on a busy machine too
        before = (runtime.n_threads, None)
        runtime.set_threads(1)
        request.addfinalizer(lambda: runtime.set_threads(*before))

    @contextlib.contextmanager
    def shared(model, name, options):
        assert model is None and name == backend
        yield engine

    monkeypatch.setattr(runner, "open_engine", shared)
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    from adaptrix.cli.main import main

    assert main(["compare", "--models", "default", "--adapters", "base,math_specialist", "--adapters-dir",
                 str(REPO / "examples/adapters"), "--backends", backend, "--tasks", "math,chat", "--limit", "3",
                 "--max-new-tokens", "48", "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [(c["adapter"], c["backend"], c["task"], c["n"]) for c in cells] == [
        ("base", backend, "math", 3), ("math_specialist", backend, "math", 3),
        ("base", backend, "chat", 3), ("math_specialist", backend, "chat", 3)]
    from adaptrix.evaluation.suites import chat_items

    facts = [row["answer"] for row in chat_items()[:3]]
    for c in cells[2:]:  # chat: an independent count of the facts recalled
        assert c["correct"] == sum(f.lower() in i["output"].lower() for f, i in zip(facts, c["items"]))
    cells = cells[:2]
    final_integer = _examples_final_integer()
    rows = [json.loads(line) for line in (REPO / "examples/math/heldout.jsonl").read_text().splitlines()[:3]]
    gold = [final_integer(r["messages"][-1]["content"]) for r in rows]
    for c in cells:
        count = sum(final_integer(i["output"]) == g for i, g in zip(c["items"], gold))
        assert c["correct"] == count
    base, adapter = cells
    assert adapter["correct"] >= 2 and adapter["correct"] > base["correct"]
    assert adapter["items"][0]["output"].startswith("48 × 4 = ")


@pytest.mark.parametrize("fixture", ["smollm2_engine", "smollm2_llamacpp"])
def test_choice_on_both_backends(fixture, request, monkeypatch, tmp_path, one_thread):
    engine = request.getfixturevalue(fixture)
    if not hasattr(engine, "score_batch"):
        pytest.skip("this adaptrix has no Engine.score_batch yet")
    backend = engine.get_model_info()["backend"]

    @contextlib.contextmanager
    def shared(model, name, options):
        yield engine

    monkeypatch.setattr(runner, "open_engine", shared)
    from adaptrix.evaluation.matrix import parse_adapters
    from adaptrix.evaluation.runner import EvalOptions, run_matrix
    from adaptrix.evaluation.tasks import load_task

    rows = [{"prompt": "The capital of France is", "choices": ["Paris", "London", "Berlin"], "answer": 0},
            {"prompt": "Two plus two equals", "choices": ["seven", "four", "nine"], "answer": 1},
            {"prompt": "The opposite of hot is", "choices": ["cold", "loud", "green"], "answer": 0}]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    options = EvalOptions(engine_options={"adapters_dir": str(REPO / "examples/adapters")})
    cells = run_matrix([None], parse_adapters("base,math_specialist"), [backend], [load_task(path)], options)
    for cell, adapter in zip(cells, (None, "math_specialist")):
        for row, item in zip(rows, cell.items):
            # the oracle: each choice scored alone through Engine.score, in the same split as lm-eval
            alone = [engine.score(row["prompt"], " " + c, adapter=adapter).logprob for c in row["choices"]]
            assert item.extra["logprobs"] == pytest.approx(alone, abs=2e-3)
            assert item.extracted == alone.index(max(alone))
    assert cells[0].items[0].correct  # Paris
