"""Every family plugin loads a tiny random model of each architecture it claims."""

from __future__ import annotations

import pytest

from adaptrix.detection import detect
from adaptrix.plugins import get_host
from adaptrix.targets import ALL_LINEAR, linear_leaf_names, resolve_target_modules
from adaptrix.types import LoadOptions
from support.tiny import ARCH_EXTRAS, EXPECTED_FAMILY, NEWER_FAMILY, VL_EXTRAS

ALL_TYPES = {**EXPECTED_FAMILY, **NEWER_FAMILY}
assert set(ALL_TYPES) <= set(ARCH_EXTRAS) | set(VL_EXTRAS)


@pytest.mark.parametrize("model_type", sorted(ALL_TYPES))
def test_plugin_loads_tiny_model_and_targets_exist(tiny_model, model_type, one_thread):
    import torch

    from adaptrix.adapters.validate import ModuleIndex
    from adaptrix.modelconfig import load_config, text_model_type

    folder = tiny_model(model_type)
    d = detect(str(folder))
    assert d.family == ALL_TYPES[model_type]
    loaded, plugin = get_host().call_family("load_model", d.family, model_id=str(folder), options=LoadOptions())
    assert plugin == d.family
    # A vision-language checkpoint loads its language model as a text-only causal LM.
    expected_type = text_model_type(load_config(str(folder))[0]) if model_type in VL_EXTRAS else model_type
    assert loaded.family == d.family and loaded.model.config.model_type == expected_type
    assert type(loaded.model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None

    ids = loaded.tokenizer(["What is machine learning?"], return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**ids).logits
    assert logits.shape == (1, ids.input_ids.shape[1], loaded.model.config.vocab_size)
    assert torch.isfinite(logits).all()

    names = linear_leaf_names(loaded.model)
    # One owner for "which layers are LoRA targets": adapter validation sees the same layers.
    assert tuple(names) == ModuleIndex.from_model(loaded.model).linear_leaves
    targets = resolve_target_modules(loaded.model, list(d.target_modules))
    assert targets and set(targets) <= set(names)
    if list(d.target_modules) == [ALL_LINEAR]:
        assert targets == names and "lm_head" not in targets


@pytest.mark.parametrize("model_type", sorted(VL_EXTRAS))
def test_vision_language_checkpoint_loads_the_same_language_model(tiny_model, model_type, one_thread):
    """Oracle: the full VL model from transformers, run on text only, gives the same logits."""
    import torch
    from transformers import AutoModelForImageTextToText

    folder = tiny_model(model_type)
    loaded, _ = get_host().call_family("load_model", NEWER_FAMILY[model_type], model_id=str(folder), options=LoadOptions())
    full = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    ids = loaded.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = full(input_ids=ids).logits
        got = loaded.model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_gpt2_style_conv1d_layers_are_lora_targets_under_generic(tiny_model):
    """transformers' Conv1D (GPT-2) is what peft's all-linear adapts: generic must not come out empty."""
    from transformers import AutoModelForCausalLM

    folder = tiny_model("gpt2")
    d = detect(str(folder))
    assert (d.family, d.target_modules) == ("generic", ("all-linear",))
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert resolve_target_modules(model, ["all-linear"]) == ["c_attn", "c_fc", "c_proj"]


def test_moe_targets_skip_fused_experts(tiny_model):
    """Routed experts are fused 3-D parameters in transformers 5: not LoRA targets."""
    for model_type in ("qwen3_moe", "mixtral", "phimoe"):
        d = detect(str(tiny_model(model_type)))
        assert "gate_proj" not in d.target_modules and "q_proj" in d.target_modules


def test_remote_code_model_refused_without_opt_in(tmp_path):
    from adaptrix.errors import RemoteCodeError
    from adaptrix.loading import check_remote_code

    cfg = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "auto_map": {"AutoModelForCausalLM": "x.Y"}}
    with pytest.raises(RemoteCodeError, match=r"custom modelling code .*'internlm2'.*trust_remote_code=True"):
        check_remote_code("org/internlm2", cfg, LoadOptions())
    assert check_remote_code("org/internlm2", cfg, LoadOptions(trust_remote_code=True)) is True
    # A model transformers implements natively never runs downloaded code, even with auto_map.
    native = {"model_type": "deepseek_v3", "auto_map": {"AutoModelForCausalLM": "x.Y"}}
    assert check_remote_code("deepseek-ai/DeepSeek-V3", native, LoadOptions(trust_remote_code=True)) is False
