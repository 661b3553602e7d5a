"""examples/math/evaluate.py on the llama.cpp backend: same prompts as the transformers path, adapter applied."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO

EVALUATE = REPO / "examples" / "math" / "evaluate.py"


def _evaluate_module():
    spec = importlib.util.spec_from_file_location("math_evaluate", EVALUATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _questions(n: int) -> list[str]:
    rows = (REPO / "examples" / "math" / "heldout.jsonl").read_text().splitlines()[:n]
    return [json.loads(r)["messages"][0]["content"] for r in rows]


def test_final_integer_takes_the_stated_answer_else_the_last_number():
    ev = _evaluate_module()
    assert ev.final_integer("48 × 4 = 160 + 32 = 192. The answer is 192.") == 192
    assert ev.final_integer("The answer is 1,240 and then 7") == 1240
    assert ev.final_integer("19 * 8 = 144") == 144
    assert ev.final_integer("no number") is None


def test_llamacpp_prompts_are_the_transformers_paths_prompts(smollm2_llamacpp):
    """Both paths score the same prompt tokens: the engine's rendering equals the HF tokenizer's chat template."""
    from transformers import AutoTokenizer

    from adaptrix.models import gguf_cache
    from adaptrix.models.default_model import default_model_path

    tok = AutoTokenizer.from_pretrained(str(gguf_cache.cached_folder(default_model_path()).folder))
    for q in _questions(3):
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        expected = tok(text, add_special_tokens=False)["input_ids"]
        assert list(smollm2_llamacpp.prepare_request(q, temperature=0).input_ids) == expected


def test_evaluate_on_llamacpp_scores_the_adapter(smollm2_llamacpp, tmp_path, capsys):
    """Two held-out questions on llama.cpp: math_specialist answers both with its worked format."""
    ev = _evaluate_module()
    out = tmp_path / "results.json"
    assert ev.main(["--backend", "llamacpp", "--limit", "2", "--base-max-new-tokens", "4", "--max-new-tokens", "48",
                    "--show", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    specialist = results["math_specialist"]
    assert (specialist["correct"], specialist["total"]) == (2, 2)
    assert specialist["examples"][0]["a"].strip().endswith("The answer is 192.")
    assert results["base"]["total"] == 2
    assert "llamacpp" in capsys.readouterr().out
