"""Cells of adaptrix eval/compare on a tiny model: counts, mixed-adapter batches, the cache, the CLI."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest

from adaptrix.evaluation import runner
from adaptrix.evaluation.cache import ResultCache
from adaptrix.evaluation.matrix import parse_adapters
from adaptrix.evaluation.runner import EvalOptions, run_matrix
from adaptrix.evaluation.stats import wilson
from adaptrix.evaluation.tasks import load_task

WORDS = ["the", "is", "of", "paris", "machine", "a", "to", "in"]
GREEDY = dict(temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory, one_thread):
    from support.adapters import make_adapter

    model = tiny_model("qwen3")
    folder = tmp_path_factory.mktemp("eval-adapters")
    make_adapter(model, folder / "a1", seed=1, scale=0.5)
    make_adapter(model, folder / "a2", seed=2, scale=0.5)
    task_file = folder / "words.jsonl"
    task_file.write_text("\n".join(json.dumps({"prompt": f"Say a word like {w}.", "answer": w}) for w in WORDS) + "\n")
    from adaptrix import Engine

    engine = Engine(model_id=str(model), adapters_dir=str(folder), progress=False, dtype="float32")
    engine.initialize()
    yield model, folder, task_file, engine
    engine.cleanup()


@pytest.fixture
def shared_engine(setup, monkeypatch):
    """run_matrix opens the module's engine (and counts how often) instead of loading the model again."""
    engine = setup[3]
    opened = []

    @contextlib.contextmanager
    def fake(model, backend, options):
        opened.append((model, backend))
        yield engine

    monkeypatch.setattr(runner, "open_engine", fake)
    return engine, opened


def options(setup, **kw) -> EvalOptions:
    return EvalOptions(engine_options={"adapters_dir": str(setup[1]), "dtype": "float32"}, **kw)


def test_cells_count_the_answers_each_adapter_gives_alone(setup, shared_engine):
    model, folder, task_file, _ = setup
    engine, _ = shared_engine
    task = load_task(task_file, metric="contains", max_new_tokens=6)
    specs = parse_adapters("base,a1,a1=0.5+a2=0.5")
    cells = run_matrix([str(model)], specs, ["transformers"], [task], options(setup, batch_size=3))
    assert [(c.adapter, c.task, c.backend, c.n) for c in cells] == [
        ("base", "words", "transformers", 8), ("a1", "words", "transformers", 8),
        ("a1=0.5+a2=0.5", "words", "transformers", 8)]
    names = runner.load_specs(engine, specs)
    outputs = {}
    for cell in cells:
        # the oracle: each answer generated alone, scored by a plain count
        alone = [engine.generate(w_prompt, adapter=names[cell.adapter], max_new_tokens=6, use_context=False, **GREEDY)
                 for w_prompt in (f"Say a word like {w}." for w in WORDS)]
        assert [r.output for r in cell.items] == alone
        count = sum(w in " ".join(a.lower().split()) for w, a in zip(WORDS, alone))
        assert cell.correct == count and cell.score == count / 8 and cell.ci == wilson(count, 8)
        outputs[cell.adapter] = alone
    assert len({tuple(v) for v in outputs.values()}) == 3  # the adapters really differ
    sequential = run_matrix([str(model)], specs, ["transformers"], [task], options(setup, batch_size=3, together=False))
    assert [[r.output for r in c.items] for c in sequential] == [[r.output for r in c.items] for c in cells]


def test_the_cache_resumes_and_survives_an_interruption(setup, shared_engine, tmp_path):
    model, folder, task_file, _ = setup
    engine, opened = shared_engine
    specs = parse_adapters("base,a1")
    cache = ResultCache(folder=tmp_path / "cache")
    first = run_matrix([str(model)], specs, ["transformers"], [load_task(task_file, metric="contains", limit=3,
                                                                         max_new_tokens=4)],
                       options(setup, batch_size=2), cache)
    assert cache.writes == 6 and len(opened) == 1
    again = run_matrix([str(model)], specs, ["transformers"], [load_task(task_file, metric="contains", limit=3,
                                                                         max_new_tokens=4)],
                       options(setup, batch_size=2), cache)
    assert len(opened) == 1, "everything was cached: the model is not even opened"
    assert [c.as_dict(items=False)["correct"] for c in again] == [c.correct for c in first]
    assert all(r.cached for c in again for r in c.items)

    calls = []
    real = engine.generate_batch_detailed

    def interrupted(prompts, **kw):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(prompts, **kw)

    engine.generate_batch_detailed = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            run_matrix([str(model)], specs, ["transformers"], [load_task(task_file, metric="contains", max_new_tokens=4)],
                       options(setup, batch_size=2), cache)
    finally:
        del engine.generate_batch_detailed
    assert calls[0] == 4  # items 4-5 for both adapters (1-3 came from the cache)
    files = list((tmp_path / "cache").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    assert len([f for f in files if f.suffix == ".json"]) == 6 + 4
    for f in files:
        if f.suffix == ".json":
            json.loads(f.read_text())  # every entry is whole
    resumed = run_matrix([str(model)], specs, ["transformers"], [load_task(task_file, metric="contains",
                                                                           max_new_tokens=4)],
                         options(setup, batch_size=2), cache)
    fresh = run_matrix([str(model)], specs, ["transformers"], [load_task(task_file, metric="contains", max_new_tokens=4)],
                       options(setup, batch_size=2), ResultCache(enabled=False))
    assert [[(r.output, r.correct) for r in c.items] for c in resumed] == \
        [[(r.output, r.correct) for r in c.items] for c in fresh]
    assert sum(r.cached for c in resumed for r in c.items) == 10
    # a setting that changes results is a new key: nothing is reused
    other = ResultCache(folder=tmp_path / "cache")
    run_matrix([str(model)], specs, ["transformers"], [load_task(task_file, metric="contains", limit=2,
                                                                 max_new_tokens=5)], options(setup), other)
    assert other.hits == 0 and other.writes == 4


class ScoringOracle:
    """The engine, plus ``score_batch`` computed by raw transformers + peft (lm-eval's way: whole = ctx + cont)."""

    def __init__(self, engine, model_dir: Path, adapters: dict[str, Path]):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._engine = engine
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        names = list(adapters)
        self.peft = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
        for n in names[1:]:
            self.peft.load_adapter(adapters[n], adapter_name=n)
        self.peft.eval()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def logprob(self, context: str, continuation: str, adapter: str | None) -> float:
        import torch

        whole = self.tok(context + continuation)["input_ids"]
        ctx = self.tok(context)["input_ids"]
        ids = torch.tensor([whole])
        with torch.no_grad():
            if adapter is None:
                with self.peft.disable_adapter():
                    logits = self.peft(ids).logits
            else:
                self.peft.set_adapter(adapter)
                logits = self.peft(ids).logits
        logp = torch.log_softmax(logits[0].double(), -1)
        return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))

    def score_batch(self, items, *, adapters=None, top=0):
        from types import SimpleNamespace

        adapters = adapters or [None] * len(items)
        return [SimpleNamespace(logprob=self.logprob(c, x, a), greedy=False) for (c, x), a in zip(items, adapters)]


@pytest.mark.parametrize("scores", ["oracle", "engine"])
def test_choice_ranks_by_log_likelihood(setup, monkeypatch, tmp_path, scores):
    """``oracle``: the runner gets raw transformers + peft's log-likelihoods (written against the scoring API
    before the engine had it); ``engine``: the engine's own ``score_batch``, checked against the same oracle."""
    model, folder, _, engine = setup
    oracle = ScoringOracle(engine, model, {"a1": folder / "a1"})
    if scores == "engine" and not hasattr(engine, "score_batch"):
        pytest.skip("this adaptrix has no Engine.score_batch yet")

    @contextlib.contextmanager
    def fake(model, backend, options):
        yield oracle if scores == "oracle" else engine

    monkeypatch.setattr(runner, "open_engine", fake)
    rows = [{"prompt": f"Question {i}: pick one.", "choices": ["the", "machine learning", "Paris", "a b c d e"],
             "answer": i % 4} for i in range(8)]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(path)
    cells = run_matrix([str(model)], parse_adapters("base,a1"), ["transformers"], [task], options(setup, batch_size=3))
    for cell, adapter in zip(cells, (None, "a1")):
        assert cell.metric == "choice"
        acc = acc_norm = 0
        for row, result in zip(rows, cell.items):
            lps = [oracle.logprob(row["prompt"], " " + c, adapter) for c in row["choices"]]
            assert result.extra["logprobs"] == pytest.approx(lps, abs=1e-9 if scores == "oracle" else 1e-4)
            acc += lps.index(max(lps)) == row["answer"]
            norm = [lp / len(c) for lp, c in zip(lps, row["choices"])]
            acc_norm += norm.index(max(norm)) == row["answer"]
        assert cell.correct == acc and cell.extra_scores()["acc_norm"] == acc_norm / 8
    assert [r.extra["logprobs"] for r in cells[0].items] != [r.extra["logprobs"] for r in cells[1].items]


def test_chat_items_are_asked_with_their_history(setup, shared_engine):
    model, folder, _, _ = setup
    engine, _ = shared_engine
    from adaptrix.evaluation.suites import load_suite

    task = load_suite("chat", limit=3, max_new_tokens=5)
    (cell,) = run_matrix([str(model)], parse_adapters("a1"), ["transformers"], [task], options(setup))
    for item, result in zip(task.items, cell.items):
        alone = engine.generate(item.prompt, history=list(item.history), adapter="a1", max_new_tokens=5,
                                use_context=False, **GREEDY)
        assert result.output == alone
    assert engine.get_history() == []  # nothing remembered


# -- the command line ---------------------------------------------------------------------------------------------


def test_cli_eval_json_and_compare_out(setup, shared_engine, tmp_path, capsys, monkeypatch):
    from adaptrix.cli.main import main

    model, folder, task_file, _ = setup
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--model", str(model), "--adapter", "base", "--adapter", "a1", "--adapters-dir", str(folder),
                 "--task", str(task_file), "--metric", "contains", "--max-new-tokens", "4", "--limit", "4",
                 "--dtype", "float32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    cells = data["cells"]
    assert [(c["model"], c["adapter"], c["task"], c["n"]) for c in cells] == [
        (str(model), "base", "words", 4), (str(model), "a1", "words", 4)]
    for c in cells:
        assert c["backend"] == "transformers"
        assert c["correct"] == sum(i["correct"] for i in c["items"]) and c["score"] == c["correct"] / 4
        assert c["ci"] == list(wilson(c["correct"], 4))
        for i, item in enumerate(c["items"]):
            assert item["index"] == i and item["prompt"] == f"Say a word like {WORDS[i]}."
            assert item["correct"] == (WORDS[i] in " ".join(item["output"].lower().split()))
            assert "extracted" in item
    assert data["comparisons"][0]["kind"] == "adapter vs base"

    out = tmp_path / "report"
    assert main(["compare", "--models", str(model), "--adapters", "base,a1,a1=0.5+a2=0.5", "--adapters-dir",
                 str(folder), "--task", str(task_file), "--metric", "contains", "--max-new-tokens", "4", "--limit", "4",
                 "--dtype", "float32", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 item results from the cache" not in captured.out  # base and a1 were cached: 8 results
    assert "8 item results from the cache" in captured.out
    lines = captured.out.splitlines()
    assert lines[0].split()[:9] == ["model", "adapter", "backend", "task", "score", "95%", "CI", "n", "tokens/s"]
    results = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["adapter"], int(r["correct"]), int(r["n"])) for r in table] == [
        (c["adapter"], c["correct"], c["n"]) for c in results["cells"]]
    page = (out / "report.html").read_text()
    assert "<table" in page and "McNemar" in page and "a1=0.5+a2=0.5" in page and "http" not in page.split("<body")[1]
    assert len(results["comparisons"]) == 2


def test_cli_errors_are_clear(setup, tmp_path, capsys):
    from adaptrix.cli.main import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    assert main(["eval", "--task", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["eval", "--tasks", "maths"]) == 2
    assert "no built-in task 'maths'" in capsys.readouterr().err
    assert main(["compare", "--adapters", "base,a=x"]) == 2
    assert "'a=x' is not NAME=WEIGHT" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "no task: give --task FILE" in capsys.readouterr().err
