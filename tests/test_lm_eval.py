"""lm-evaluation-harness end to end, offline, on local JSON tasks (issue 17 item 4), both ways:

``--model adaptrix`` (the engine directly) and ``--model local-completions`` with
``tokenizer_backend=remote`` against a real ``adaptrix serve`` on 127.0.0.1, on the same weights
(the embedded SmolLM2, transformers float32) with the same adapter: equal scores, and per item the
same choice log-likelihoods (within float noise) and the same generated text.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("starlette")
pytest.importorskip("torch")

from support.server import LiveServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "adapters"
MC = [("What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], 0),
      ("What is 2 + 2?", ["3", "4", "5", "22"], 1),
      ("Which animal says meow?", ["dog", "cow", "cat", "duck"], 2),
      ("What color is the sky on a clear day?", ["green", "blue", "red", "black"], 1),
      ("How many legs does a spider have?", ["six", "four", "ten", "eight"], 3)]
GEN = [("What is the capital of France?", "Paris"), ("What is 3 + 5?", "8"),
       ("What is the opposite of hot?", "cold"), ("What is the capital of Italy?", "Rome")]
#: Five stop strings: lm-eval adds EOS, six in all (the server took at most 4 before).
UNTIL = ["\n\n", "Question:", ".", ",", "!"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """Two local tasks in a folder for ``--include_path``: multiple choice and generation (``dataset_path: json``)."""
    root = tmp_path_factory.mktemp("tasks")
    (root / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                           for q, c, a in MC))
    (root / "gen.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GEN))
    (root / "mc.yaml").write_text(textwrap.dedent(f"""\
        task: adx_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {root / 'mc.jsonl'}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list:
          - metric: acc
          - metric: acc_norm
        """))
    (root / "gen.yaml").write_text(textwrap.dedent(f"""\
        task: adx_gen
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {root / 'gen.jsonl'}
        test_split: test
        output_type: generate_until
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_target: " {{{{answer}}}}"
        generation_kwargs:
          until: {json.dumps(UNTIL)}
          max_gen_toks: 12
          do_sample: false
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            ignore_case: true
            ignore_punctuation: true
        """))
    return root


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def engine(request):
    """The session's SmolLM2 on each backend, the example adapter ``math_specialist`` loaded (unloaded after)."""
    engine = request.getfixturevalue("smollm2_engine" if request.param == "transformers" else "smollm2_llamacpp")
    engine.load_adapter(str(EXAMPLES / "math_specialist"), activate=False)
    yield engine
    engine.unload_adapter("math_specialist")


@pytest.fixture(scope="module")
def server(engine):
    from adaptrix.serve.app import ServeOptions, create_app

    with LiveServer(create_app(lambda: engine, ServeOptions(adapters_dir=str(EXAMPLES)))) as srv:
        yield srv


def _evaluate(model, tasks: Path, **kw) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=["adx_mc", "adx_gen"], task_manager=TaskManager(
        include_path=str(tasks)), log_samples=True, **kw)


def _scores(out: dict) -> dict:
    return {task: {k: v for k, v in metrics.items() if "," in k and "stderr" not in k}
            for task, metrics in out["results"].items()}


def _samples(out: dict, task: str) -> list:
    return [s["resps"] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("adapter", ["math_specialist", "base"])
def test_direct_and_through_the_server_give_equal_scores(engine, server, tasks, adapter):
    from adaptrix.evaluation.lm_eval_model import AdaptrixLM

    direct = _evaluate(AdaptrixLM(engine=engine, adapter=adapter, batch_size=4), tasks)
    served = _evaluate("local-completions", tasks, model_args=(
        f"model={adapter},base_url={server.url}/v1/completions,tokenizer_backend=remote,max_retries=1"))
    assert _scores(direct) == _scores(served)
    for (got,), (want,) in zip(sum(_samples(served, "adx_mc"), []), sum(_samples(direct, "adx_mc"), [])):
        assert got[0] == pytest.approx(want[0], abs=1e-4) and got[1] == want[1]
    assert _samples(served, "adx_gen") == _samples(direct, "adx_gen")
    scores = _scores(direct)
    assert 0 < scores["adx_mc"]["acc,none"] and 0 < scores["adx_gen"]["exact_match,none"]  # the tasks measure


def test_adaptrix_lm_eval_command_registers_the_model(engine, tasks, tmp_path, capsys):
    """``adaptrix lm-eval --model adaptrix ...`` is lm-eval's own command line; its scores are the library's."""
    from adaptrix.cli.main import main
    from adaptrix.evaluation.lm_eval_model import AdaptrixLM

    backend = engine.get_model_info()["backend"]
    code = main(["lm-eval", "--model", "adaptrix", "--model_args",
                 f"backend={backend},adapter=math_specialist,adapters_dir={EXAMPLES}",
                 "--tasks", "adx_mc", "--include_path", str(tasks), "--batch_size", "4",
                 "--output_path", str(tmp_path)])
    assert code == 0
    written = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    direct = _evaluate(AdaptrixLM(engine=engine, adapter="math_specialist", batch_size=4), tasks)
    assert _scores(written)["adx_mc"] == _scores(direct)["adx_mc"]
    assert "adx_mc" in capsys.readouterr().out


def test_rolling_loglikelihood_is_the_sum_over_the_text(engine):
    """``loglikelihood_rolling``: the text's log-likelihood after the EOS prefix, as one scored row."""
    from lm_eval.api.instance import Instance

    from adaptrix.evaluation.lm_eval_model import AdaptrixLM

    text = "The capital of France is Paris. It is a large city."
    lm = AdaptrixLM(engine=engine, batch_size=2)
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    want = engine.score([engine.tokenizer.eos_token_id], ids, adapter=None).logprob
    assert got == pytest.approx(want, abs=1e-4)
