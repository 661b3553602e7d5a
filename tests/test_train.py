"""adaptrix train on tiny models of every family: loss falls, plain peft loads the result."""

from __future__ import annotations

import json

import pytest

from adaptrix.errors import TrainingError
from support.tiny import EXPECTED_FAMILY

QA = [
    ("What is 25 times 8?", "25 times 8 is 200."),
    ("What is machine learning?", "Machine learning is a field of computer science."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Hello, how are you today?", "I am fine, thank you."),
    ("Compute 47 + 38", "47 + 38 = 85."),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_data(path, rows=QA, chat=True):
    with open(path, "w", encoding="utf-8") as f:
        for i, (q, a) in enumerate(rows):
            if chat and i % 2 == 0:
                f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}))
            else:
                f.write(json.dumps({"prompt": q, "completion": a}))
            f.write("\n")
    return path


def config(model, data, out, **kw):
    from adaptrix.training import TrainConfig

    base = dict(model=str(model), data=str(data), output=str(out), rank=4, lr=1e-2, max_steps=6,
                batch_size=len(QA), save_every=3, progress=False, threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("model_type", sorted(EXPECTED_FAMILY))
def test_train_each_family(model_type, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptrix.adapters.targets import resolve_target_modules
    from adaptrix.plugins.host import get_host
    from adaptrix.training import train

    model = tiny_model(model_type)
    out = tmp_path / "adapter"
    result = train(config(model, write_data(tmp_path / "d.jsonl"), out))
    family = EXPECTED_FAMILY[model_type]
    assert result.family == family
    # The whole data set is one batch, so step losses are comparable: training lowered it.
    assert result.losses[-1] < result.losses[0], result.losses

    cfg = json.loads((model / "config.json").read_text())
    hook, _ = get_host().call_family("target_modules", family, config=cfg)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    expected = resolve_target_modules(base, hook)  # all-linear (generic) expands to leaf names
    saved = json.loads((out / "adapter_config.json").read_text())
    meta = json.loads((out / "adaptrix.json").read_text())
    assert meta["family"] == family and meta["steps"] == 6
    if "peft_remap" not in meta:
        assert sorted(saved["target_modules"]) == sorted(expected)
        assert sorted(meta["targets"]) == sorted(expected)
    else:
        # peft 0.21 on transformers 5 maps deepseek_v3's MLP names onto fused expert parameters, which
        # adaptrix does not load: the trainer keeps the plugin's other targets and says so.
        assert model_type == "deepseek_v3"
        moved = {"gate_proj", "up_proj", "down_proj"}
        assert sorted(meta["peft_remap"]["dropped"]) == sorted(moved)
        assert sorted(saved["target_modules"]) == sorted(meta["targets"]) == sorted(set(expected) - moved)
        assert not saved.get("target_parameters")
    assert meta["final_loss"] < meta["first_loss"]

    from adaptrix.adapters.validate import validate_for_model
    from adaptrix.plugins.host import get_host

    report = validate_for_model(str(out), str(model), host=get_host())  # adaptrix's own validation, from the config
    assert report.ok, report.errors

    peft_model = PeftModel.from_pretrained(base, str(out))  # plain peft, nothing adaptrix-specific
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)


def test_resume_continues_exactly(tiny_model, tmp_path, monkeypatch, capsys):
    from adaptrix.training import trainer

    model = tiny_model("llama")
    data = write_data(tmp_path / "d.jsonl")
    full = trainer.train(config(model, data, tmp_path / "full", save_every=2))

    real_save = trainer._save_checkpoint

    def crash_after_step_4(*args):
        real_save(*args)
        if args[3] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_checkpoint", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config(model, data, tmp_path / "cut", save_every=2))
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)

    with pytest.raises(TrainingError, match="--resume"):
        trainer.train(config(model, data, tmp_path / "cut", save_every=2))
    resumed = trainer.train(config(model, data, tmp_path / "cut", save_every=2, resume=True))
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert resumed.losses == pytest.approx(full.losses, rel=1e-4)

    longer = trainer.train(config(model, data, tmp_path / "cut", save_every=2, resume=True, max_steps=8))
    assert longer.resumed_from == 6 and longer.steps == 8
    capsys.readouterr()
    done = trainer.train(config(model, data, tmp_path / "cut", save_every=2, resume=True, max_steps=8))
    assert "checkpoint is at step 8, the run has 8 steps; nothing to train" in capsys.readouterr().out
    assert done.resumed_from == 8 and done.losses == longer.losses  # trained nothing more

    with pytest.raises(TrainingError, match="rank"):
        trainer.train(config(model, data, tmp_path / "cut", resume=True, rank=8, max_steps=9))


def test_answer_only_labels(tiny_model):
    from transformers import AutoTokenizer

    from adaptrix.training.data import IGNORE_INDEX, Sample, encode, render

    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    sample = Sample((("system", "Be brief."), ("user", "What is 25 times 8?"), ("assistant", "200")), line=1)
    prompt, answer = render(tok, sample)
    assert prompt.endswith("<|im_start|>assistant\n") and answer == "200<|im_end|>\n"
    enc = encode(tok, sample, max_length=None)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in enc.labels[:n_prompt])
    assert list(enc.labels[n_prompt:]) == list(enc.input_ids[n_prompt:])
    assert tok.decode(enc.input_ids[n_prompt:]) == "200<|im_end|>\n"

    tok.chat_template = None  # plain fallback
    prompt, answer = render(tok, sample)
    assert prompt == "System: Be brief.\nUser: What is 25 times 8?\nAssistant:" and answer == " 200<|im_end|>"


@pytest.mark.parametrize("template", [True, False], ids=["chat-template", "plain"])
def test_trained_prompt_is_the_served_prompt(tiny_model, template):
    """An adapter learns on exactly the text and tokens the engine later feeds it for the same conversation."""
    from transformers import AutoTokenizer

    from adaptrix.generation.conversation import build_prompt
    from adaptrix.training.data import IGNORE_INDEX, Sample, encode

    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    if not template:
        tok.chat_template = None
    sample = Sample((("system", "Be brief."), ("user", "What is 25 times 8?"), ("assistant", "200")), line=1)
    served = build_prompt(tok, "What is 25 times 8?", system="Be brief.")
    enc = encode(tok, sample, max_length=None)
    n_prompt = enc.labels.index(next(label for label in enc.labels if label != IGNORE_INDEX))
    assert enc.input_ids[:n_prompt] == served.input_ids
    assert tok.decode(enc.input_ids[:n_prompt]) == tok.decode(served.input_ids)
    assert served.templated is template

@pytest.mark.parametrize(
    "lines, line, match",
    [
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "only a prompt"}'], 2, "missing field 'completion'"),
        (['{"prompt": "a", "completion": "b"}', "", '{"prompt": "a", completion: "b"}'], 3, "not valid JSON"),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], 1, "last message must be"),
        (['{"messages": [{"role": "robot", "content": "hi"}]}'], 1, "role is 'robot'"),
        (['["a", "b"]'], 1, "expected a JSON object"),
    ],
)
def test_bad_data_names_the_line(tmp_path, lines, line, match):
    from adaptrix.training import load_jsonl

    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainingError, match=match) as info:
        load_jsonl(path)
    assert f"bad.jsonl:{line}:" in str(info.value)


def test_empty_and_missing_files(tmp_path):
    from adaptrix.training import load_jsonl

    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TrainingError, match="empty"):
        load_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(TrainingError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_sample_longer_than_context(tiny_model, tmp_path):
    from adaptrix.training import train

    rows = QA[:2] + [("word " * 300, "long")]  # the tiny models have a 256-token context
    with pytest.raises(TrainingError, match=r"d\.jsonl:3: sample is \d+ tokens, longer than the context of 256"):
        train(config(tiny_model("qwen2"), write_data(tmp_path / "d.jsonl", rows), tmp_path / "out"))
    with pytest.raises(TrainingError, match=r"d\.jsonl:1: .*context of 8"):
        train(config(tiny_model("qwen2"), write_data(tmp_path / "d.jsonl"), tmp_path / "out", max_length=8))


def test_unknown_targets_and_bad_options(tiny_model, tmp_path):
    from adaptrix.training import train

    data = write_data(tmp_path / "d.jsonl")
    with pytest.raises(TrainingError, match="nope_proj"):
        train(config(tiny_model("llama"), data, tmp_path / "o", targets=["nope_proj"]))
    with pytest.raises(TrainingError, match="rank=0"):
        train(config(tiny_model("llama"), data, tmp_path / "o", rank=0))
    with pytest.raises(TrainingError, match="task_type='style'.*general, chat, code, math, creative"):
        train(config(tiny_model("llama"), data, tmp_path / "o", task_type="style"))


def test_cli_train(tiny_model, tmp_path, capsys):
    from adaptrix.cli.main import main

    data = write_data(tmp_path / "d.jsonl")
    out = tmp_path / "adapters" / "tiny"
    rc = main(["train", "--model", str(tiny_model("qwen3")), "--data", str(data), "--output", str(out),
               "--rank", "4", "--targets", "q_proj", "v_proj", "--max-steps", "3", "--lr", "1e-2",
               "--task-type", "code", "--no-progress"])
    assert rc == 0
    assert "saved" in capsys.readouterr().out
    meta = json.loads((out / "adaptrix.json").read_text())
    assert meta["task_type"] == "code" and meta["targets"] == ["q_proj", "v_proj"] and meta["rank"] == 4
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint" / ".gitignore").read_text().strip().endswith("*")

    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    rc = main(["train", "--model", str(tiny_model("qwen3")), "--data", str(tmp_path / "bad.jsonl"),
               "--output", str(tmp_path / "o2")])
    assert rc == 2
    assert "bad.jsonl:1: missing field 'completion'" in capsys.readouterr().err


def test_engine_loads_trained_adapter(tiny_model, tmp_path):
    from adaptrix import Engine
    from adaptrix.training import train

    model = tiny_model("llama")
    train(config(model, write_data(tmp_path / "d.jsonl"), tmp_path / "adapters" / "tiny_qa"))
    engine = Engine(str(model), adapters_dir=tmp_path / "adapters", progress=False)
    engine.initialize()
    try:
        engine.load_adapter("tiny_qa")
        info = engine.adapters.info("tiny_qa")
        assert engine.active_adapter == "tiny_qa"
        assert info.task_type == "general"
        with_adapter = engine.generate_detailed("What is 25 times 8?", max_new_tokens=8, temperature=0)
        base = engine.generate_detailed("What is 25 times 8?", adapter=None, max_new_tokens=8, temperature=0)
        from adaptrix.generation.conversation import build_prompt

        prompt_ids = list(build_prompt(engine.tokenizer, "What is 25 times 8?").input_ids)
    finally:
        engine.cleanup()
    # Oracle: plain transformers + peft, greedy, on the same prompt tokens.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def greedy(m):
        out = m.generate(torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False)
        return out[0, len(prompt_ids):].tolist()

    base_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    expected_base = greedy(base_model)
    expected_tuned = greedy(PeftModel.from_pretrained(base_model, str(tmp_path / "adapters" / "tiny_qa")).eval())
    assert list(base.token_ids) == expected_base[: len(base.token_ids)]
    assert list(with_adapter.token_ids) == expected_tuned[: len(with_adapter.token_ids)]
    assert expected_tuned != expected_base  # the trained adapter changes what a user gets


def test_output_is_checked_before_training(tiny_model, tmp_path, monkeypatch):
    from adaptrix.training import train, trainer

    model = tiny_model("llama")
    data = write_data(tmp_path / "d.jsonl")
    loads = []
    monkeypatch.setattr(trainer, "load_for_training", lambda cfg: loads.append(cfg) or pytest.fail("loaded"))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(TrainingError, match=r"existing already holds an adapter; pass --overwrite"):
        train(config(model, data, existing))
    assert (existing / "adapter_config.json").read_text() == '{"r": 8}'
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TrainingError, match=r"afile is a file"):
        train(config(model, data, tmp_path / "afile"))
    with pytest.raises(TrainingError, match=r"cannot create --output .*afile/sub"):
        train(config(model, data, tmp_path / "afile" / "sub"))
    with pytest.raises(TrainingError, match=r"threads=-2 is invalid"):
        train(config(model, data, tmp_path / "o", threads=-2))
    assert loads == []

    monkeypatch.undo()
    result = train(config(model, data, existing, overwrite=True, max_steps=2))
    assert result.steps == 2 and json.loads((existing / "adapter_config.json").read_text())["r"] == 4


def test_resume_runs_no_pickle_and_checks_the_base_model(tiny_model, tmp_path):
    import pickle

    from adaptrix.training import train

    model = tiny_model("llama")
    data = write_data(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    train(config(model, data, out, max_steps=2, save_every=1))
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2 and not list((out / "checkpoint").glob("*.pt"))
    with pytest.raises(TrainingError, match=r"checkpoint was trained on .* but this run loads"):
        train(config(tiny_model("qwen2"), data, out, max_steps=3, resume=True))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    legacy = tmp_path / "legacy"
    (legacy / "checkpoint").mkdir(parents=True)
    (legacy / "checkpoint" / "trainer_state.pt").write_bytes(pickle.dumps({"step": Payload()}))
    with pytest.raises(TrainingError, match=r"pickle that can run code, so it is not loaded"):
        train(config(model, data, legacy, resume=True))
    assert not marker.exists()


def test_train_on_gguf_converts_once(tiny_model, tmp_path, monkeypatch):
    from adaptrix.models import gguf_cache
    from adaptrix.training import train
    from support.gguf import FakeConverter, write_gguf

    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    conv = FakeConverter(source=tiny_model("llama"))
    monkeypatch.setattr(gguf_cache, "convert_with_transformers", conv)
    f = write_gguf(tmp_path / "tiny.gguf")
    data = write_data(tmp_path / "d.jsonl")
    first = train(config(f, data, tmp_path / "a", max_steps=1))
    second = train(config(f, data, tmp_path / "b", max_steps=1))
    assert conv.calls == 1 and first.family == second.family == "llama"
    assert first.losses == second.losses
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(f)


def test_output_keeps_other_files_and_a_full_disk_keeps_the_previous_adapter(tiny_model, tmp_path, monkeypatch):
    """Issue 15, items 3 and 8: the adapter's files replace the old ones, atomically; the rest of --output stays."""
    import errno

    import peft.peft_model

    from adaptrix.errors import StorageError
    from adaptrix.training import train

    model, data, out = tiny_model("llama"), write_data(tmp_path / "d.jsonl"), tmp_path / "adapter"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "d.jsonl").write_bytes(data.read_bytes())
    train(config(model, data, out, max_steps=2, save_every=5))
    assert (out / "README.md").read_text() == "my notes" and (out / "d.jsonl").read_bytes() == data.read_bytes()
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    real = peft.peft_model.safe_save_file

    def disk_full(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as fh:  # what a full disk leaves: half a file, then the error
            fh.truncate(fh.seek(0, 2) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_full)
    with pytest.raises(StorageError, match="no space left on the device") as caught:
        train(config(model, data, out, max_steps=3, save_every=5, overwrite=True, seed=3))
    assert caught.value.no_space and str(out) in str(caught.value) and "--output" in str(caught.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == first  # the first adapter, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_checkpoint_folder_that_is_not_ours_is_never_replaced(tiny_model, tmp_path, monkeypatch):
    from adaptrix.training import train, trainer

    monkeypatch.setattr(trainer, "load_for_training", lambda cfg: pytest.fail("loaded"))
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "model.pt").write_bytes(b"someone else's")
    for overwrite in (False, True):
        with pytest.raises(TrainingError, match=r"checkpoint, which is not an adaptrix training checkpoint"):
            train(config(tiny_model("llama"), write_data(tmp_path / "d.jsonl"), out, overwrite=overwrite))
    assert (out / "checkpoint" / "model.pt").read_bytes() == b"someone else's"
