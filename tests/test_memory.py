"""``dtype="auto"`` on the CPU knows the model's size and the free memory (issue 15, item 17).

The free memory is faked (``adaptrix.models.memory.available_memory`` is the one probe); the sizes are read
from tiny random models saved to disk, as they are for a real checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from adaptrix.errors import ModelTooLargeError
from adaptrix.models import memory

pytestmark = pytest.mark.usefixtures("one_thread")

#: Parameters the model cards publish, for the configs of the shared fixtures.
PUBLISHED = {
    "mistral.json": 7.24e9, "llama3_2_1b.json": 1.24e9, "qwen2.5_0.5b.json": 0.49e9, "qwen2.5_7b.json": 7.61e9,
    "gemma_7b.json": 8.54e9, "phi3.json": 3.82e9, "mixtral.json": 46.7e9, "smollm_1.7b.json": 1.71e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_estimate_from_a_config_is_the_published_size(fixtures_dir, name):
    config = json.loads((fixtures_dir / "model-configs" / name).read_text())
    assert memory.estimate_parameters(config) == pytest.approx(PUBLISHED[name], rel=0.02)


def _source(folder):
    from adaptrix.models.source import resolve_source
    from adaptrix.plugins.host import get_host

    return resolve_source(str(folder), host=get_host())


def test_the_size_of_a_saved_model_is_its_parameters(tiny_model):
    """Oracle: the parameters of the model transformers loads from the folder."""
    from transformers import AutoModelForCausalLM

    folder = tiny_model("llama")
    size = memory.weight_size(_source(folder))
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
    assert size.checkpoint_dtype == "float32" and "model.safetensors" in size.origin
    assert size.parameters == pytest.approx(real, rel=0.05)  # the file's size: weights and a small header


def _big_checkpoint(tiny_model, tmp_path, parameters: int):
    """The tiny llama's config and tokenizer with a bfloat16 checkpoint of ``parameters`` parameters, sharded
    with an index as published, its shards sparse files of that size (nothing a loader could read)."""
    folder = tmp_path / "big"
    shutil.copytree(tiny_model("llama"), folder)
    (folder / "model.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    total, shards = parameters * 2, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard in shards:
        with open(folder / shard, "wb") as f:
            f.truncate(total // 2)
    index = {"metadata": {"total_size": total}, "weight_map": {"model.embed_tokens.weight": shards[0],
                                                               "lm_head.weight": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder, shards


def test_a_model_too_big_for_float32_loads_in_bfloat16(tiny_model, monkeypatch, capsys):
    import torch

    from adaptrix import Engine
    from adaptrix.cli.main import main

    folder = str(tiny_model("llama"))
    size = memory.weight_size(_source(folder))
    room = memory.Available(memory.needed(size.bytes("bfloat16")), "a test's probe")  # bfloat16 fits, float32 not
    monkeypatch.setattr(memory, "available_memory", lambda: room)
    engine = Engine(folder, backend="transformers", progress=False)
    engine.initialize()
    asked = Engine(folder, backend="transformers", dtype="bfloat16", progress=False)  # the oracle: bf16 asked for
    asked.initialize()
    try:
        info = engine.get_model_info()
        assert info["dtype"] == "bfloat16"
        assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
        reason = info["dtype_reason"]
        assert "float32 weights" in reason and "would not fit" in reason and "a test's probe" in reason
        assert size.describe("float32") in reason
        prompt = "What is machine learning?"
        assert engine.generate_detailed(prompt, temperature=0, max_new_tokens=8).token_ids == \
            asked.generate_detailed(prompt, temperature=0, max_new_tokens=8).token_ids
        assert "asked for" in asked.get_model_info()["dtype_reason"]
    finally:
        engine.cleanup()
        asked.cleanup()
    assert main(["info", "--model", folder, "--backend", "transformers"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16 (auto: float32 weights" in out


def test_a_model_that_fits_keeps_float32_and_says_why(tiny_model, monkeypatch):
    from adaptrix import Engine

    folder = str(tiny_model("llama"))
    monkeypatch.setattr(memory, "available_memory", lambda: memory.Available(64 * memory.GIB, "a test's probe"))
    engine = Engine(folder, backend="transformers", progress=False)
    engine.initialize()
    try:
        info = engine.get_model_info()
        assert info["dtype"] == "float32"
        assert "the CPU default" in info["dtype_reason"] and "fit in 64.0 GiB available" in info["dtype_reason"]
    finally:
        engine.cleanup()


def test_a_model_too_big_for_any_dtype_is_refused_before_any_weight_is_read(tiny_model, tmp_path, monkeypatch):
    from adaptrix import Engine
    from support.opens import OpenWatch

    if not OpenWatch.available():
        pytest.skip("watching file opens needs Linux inotify")
    folder, shards = _big_checkpoint(tiny_model, tmp_path, parameters=7_241_732_096)  # Mistral-7B
    monkeypatch.setattr(memory, "available_memory", lambda: memory.Available(8 * memory.GIB, "a test's probe"))
    engine = Engine(str(folder), backend="transformers", progress=False)
    with OpenWatch(folder) as watch, pytest.raises(ModelTooLargeError) as info:
        engine.initialize()
    opened = watch.opened()
    assert "config.json" in opened  # the watch sees what the engine opens
    assert not opened & set(shards), f"weight files were opened: {opened}"
    message = str(info.value)
    assert message.startswith(f"{folder} does not fit in memory in any dtype")
    assert "7.24 B parameters x 4 bytes = 27.0 GiB in float32" in message
    assert "7.24 B parameters x 2 bytes = 13.5 GiB in bfloat16" in message
    assert "model.safetensors.index.json" in message and "8.0 GiB available (a test's probe)" in message
    assert "backend that runs GGUF files" in message and "Q4_K_M about 4.0 GiB" in message and "dtype='bfloat16'" in message
    # The engine stays usable: with the memory there, the same folder gets past the check.
    monkeypatch.setattr(memory, "available_memory", lambda: memory.Available(64 * memory.GIB, "a test's probe"))
    with pytest.raises(Exception) as later:
        engine.initialize()
    assert not isinstance(later.value, ModelTooLargeError)  # now the (fake) weights themselves fail to load


def test_the_16_bit_dtype_follows_the_checkpoint_and_the_cpu(monkeypatch, tiny_model, tmp_path):
    """float16 checkpoint: float16 where the CPU has no native bfloat16, bfloat16 where it has."""
    import torch

    from adaptrix.models.devices import choose_dtype

    folder = tmp_path / "fp16"
    shutil.copytree(tiny_model("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    source = _source(folder)
    size = memory.weight_size(source)
    monkeypatch.setattr(memory, "available_memory",
                        lambda: memory.Available(memory.needed(size.bytes("float16")), "a test's probe"))
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: False)
    choice = choose_dtype("auto", cpu, source)
    assert choice.dtype == "float16" and "the checkpoint's own dtype" in choice.reason
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: True)
    choice = choose_dtype("auto", cpu, source)
    assert choice.dtype == "bfloat16" and "computed natively by this CPU" in choice.reason
    assert choose_dtype("float32", cpu, source).dtype == "float32"  # an explicit dtype is not checked


def test_unknown_free_memory_keeps_the_cpu_default(monkeypatch, tiny_model):
    import torch

    from adaptrix.models.devices import choose_dtype

    monkeypatch.setattr(memory, "available_memory", lambda: None)
    choice = choose_dtype("auto", torch.device("cpu"), _source(tiny_model("llama")))
    assert choice.dtype == "float32" and "available memory unknown" in choice.reason


def test_the_memory_probe_reads_this_machine():
    found = memory.available_memory()
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo here")
    total = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1]) * 1024
    assert found is not None and 0 < found.bytes <= total
