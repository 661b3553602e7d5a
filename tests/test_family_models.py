"""Every family plugin loads a tiny random model of each architecture it claims."""

from __future__ import annotations

import pytest

from adaptrix.detection import detect
from adaptrix.plugins import get_host
from adaptrix.targets import ALL_LINEAR, linear_leaf_names, resolve_target_modules
from adaptrix.types import LoadOptions
from support.tiny import ARCH_EXTRAS, EXPECTED_FAMILY


@pytest.mark.parametrize("model_type", sorted(ARCH_EXTRAS))
def test_plugin_loads_tiny_model_and_targets_exist(tiny_model, model_type):
    import torch

    folder = tiny_model(model_type)
    d = detect(str(folder))
    assert d.family == EXPECTED_FAMILY[model_type]
    loaded, plugin = get_host().call_family("load_model", d.family, model_id=str(folder), options=LoadOptions())
    assert plugin == d.family
    assert loaded.family == d.family and loaded.model.config.model_type == model_type
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None

    ids = loaded.tokenizer(["What is machine learning?"], return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**ids).logits
    assert logits.shape == (1, ids.input_ids.shape[1], loaded.model.config.vocab_size)
    assert torch.isfinite(logits).all()

    names = linear_leaf_names(loaded.model)
    targets = resolve_target_modules(loaded.model, list(d.target_modules))
    assert targets and set(targets) <= set(names)
    if list(d.target_modules) == [ALL_LINEAR]:
        assert targets == names and "lm_head" not in targets


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
