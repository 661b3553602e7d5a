"""Every family plugin loads a tiny random model of each architecture it claims."""

from __future__ import annotations

import pytest

from adaptrix.adapters.targets import ALL_LINEAR, linear_leaf_names, resolve_target_modules
from adaptrix.plugins.detection import detect
from adaptrix.plugins.host import get_host
from adaptrix.types import LoadOptions
from support.tiny import ARCH_EXTRAS, EXPECTED_FAMILY, NEWER_FAMILY, VL_EXTRAS

ALL_TYPES = {**EXPECTED_FAMILY, **NEWER_FAMILY}
assert set(ALL_TYPES) <= set(ARCH_EXTRAS) | set(VL_EXTRAS)


@pytest.mark.parametrize("model_type", sorted(ALL_TYPES))
def test_plugin_loads_tiny_model_and_targets_exist(tiny_model, model_type, one_thread):
    import torch

    from adaptrix.adapters.validate import ModuleIndex
    from adaptrix.models.modelconfig import load_config, text_model_type

    folder = tiny_model(model_type)
    d = detect(str(folder))
    assert d.family == ALL_TYPES[model_type]
    loaded, plugin = get_host().call_family("load_model", d.family, model_id=str(folder), options=LoadOptions())
    assert plugin == d.family
    # A vision-language checkpoint loads its language model as a text-only causal LM (transformers may name
    # its config after the text part: Llama 3.2 Vision's MllamaForCausalLM runs on "mllama_text_model").
    config = load_config(str(folder))[0]
    expected_types = {text_model_type(config), config["text_config"]["model_type"]} if model_type in VL_EXTRAS \
        else {model_type}
    assert loaded.family == d.family and loaded.model.config.model_type in expected_types
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
    from adaptrix.models.loading import check_remote_code

    cfg = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "auto_map": {"AutoModelForCausalLM": "x.Y"}}
    with pytest.raises(RemoteCodeError, match=r"custom modelling code .*'internlm2'.*trust_remote_code=True"):
        check_remote_code("org/internlm2", cfg, LoadOptions())
    assert check_remote_code("org/internlm2", cfg, LoadOptions(trust_remote_code=True)) is True
    # A model transformers implements natively never runs downloaded code, even with auto_map.
    native = {"model_type": "deepseek_v3", "auto_map": {"AutoModelForCausalLM": "x.Y"}}
    assert check_remote_code("deepseek-ai/DeepSeek-V3", native, LoadOptions(trust_remote_code=True)) is False


#: Names that belong to a family, written independently of the plugins: a model_type starting
#: with one of these is that family's.
FAMILY_NAMES = {
    "qwen": ("qwen",), "gemma": ("gemma",), "mistral": ("mistral", "mixtral", "ministral"),
    "phi": ("phi",), "llama": ("llama",), "deepseek": ("deepseek",),
}


#: Types of a family whose name does not say so, read from transformers' registry
#: (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES): Llama 3.2 Vision's MllamaForCausalLM, the types transformers runs
#: with LlamaForCausalLM itself, and Google's RecurrentGemma and VaultGemma.
NAMED_OTHERWISE = {
    "mllama": "llama", "internlm3": "llama", "iquestcoder": "llama",
    "recurrent_gemma": "gemma", "vaultgemma": "gemma",
}


def family_of_name(model_type: str) -> str | None:
    if model_type in NAMED_OTHERWISE:
        return NAMED_OTHERWISE[model_type]
    owners = [f for f, names in FAMILY_NAMES.items() if model_type.startswith(names)]
    assert len(owners) <= 1
    return owners[0] if owners else None


def expected_family(config: dict) -> str | None:
    """A vision-language checkpoint runs as its language model: it is that model's family's."""
    text = config.get("text_config", {}).get("model_type")
    return family_of_name(text) if text else family_of_name(config["model_type"])


@pytest.fixture(scope="module")
def transformers_causal_configs():
    """``(model_type, config)`` for every causal-LM model type of the installed transformers, plus
    every config that holds a text model (with a causal-LM class) in ``text_config``: vision-language
    checkpoints, whatever their name (LLaVA, PaliGemma, DeepSeek-VL, Kimi-K2.5)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    def first(cls):
        return cls[0] if isinstance(cls, (list, tuple)) else cls

    out = {mt: {"model_type": mt, "architectures": [first(c)]} for mt, c in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()}
    for mt in CONFIG_MAPPING:
        try:
            text = getattr(CONFIG_MAPPING[mt](), "text_config", None)
        except Exception:
            continue
        text_type = getattr(text, "model_type", None)
        if text_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            arch = first(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(mt) or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(mt))
            out[mt] = {
                "model_type": mt,
                "architectures": [arch or "ForConditionalGeneration"],
                "text_config": {"model_type": text_type},
                "vision_config": {},
            }
    return out


def test_every_family_model_type_of_the_installed_transformers_is_claimed_by_that_family_only(
    transformers_causal_configs,
):
    from adaptrix.plugins.host import PluginHost

    host = PluginHost(environ={}, strict=True)
    host.load_entry_points()
    impls = [i for i in host.pm.hook.detect_family.get_hookimpls() if i.plugin_name in FAMILY_NAMES]
    problems = []
    for model_type, config in sorted(transformers_causal_configs.items()):
        args = {"model_id": "x", "config": config}
        claimants = sorted(i.plugin_name for i in impls if i.function(**{k: args[k] for k in i.argnames}))
        expected = expected_family(config)
        if claimants != ([expected] if expected else []):
            problems.append(f"{model_type}: expected {expected}, claimed by {claimants}")
        elif expected is not None:
            d = detect("x", host=host, config=config, source=model_type)
            if d.family != expected:
                problems.append(f"{model_type}: detect says {d.family}")
    assert not problems, "\n".join(problems)
    # Types with a name of a family that are a family's generation (not an unrelated architecture).
    claimed = {t: expected_family(c) for t, c in transformers_causal_configs.items() if expected_family(c)}
    assert {"qwen3_next", "gemma4_text", "ministral3", "deepseek_v4", "gemma3", "llama4"} <= set(claimed)
    # Named otherwise, or wrappers around a family's language model (DeepSeek-VL's is a Llama).
    assert {"mllama": "llama", "recurrent_gemma": "gemma", "llava": "llama", "paligemma": "gemma",
            "deepseek_vl": "llama", "kimi_k25": "deepseek"}.items() <= claimed.items()


def test_vision_language_config_without_a_text_model_is_refused_naming_the_architecture():
    from adaptrix.errors import NotACausalLMError

    cfg = {"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"], "vision_config": {}}
    with pytest.raises(NotACausalLMError, match=r"Qwen2VLForConditionalGeneration.*no text-only causal LM class"):
        detect("Qwen/Qwen2-VL-2B", config=cfg, source="qwen2_vl.json")
    with_text = {"model_type": "mistral3", "architectures": ["Mistral3ForConditionalGeneration"],
                 "text_config": {"model_type": "mistral"}, "vision_config": {}}
    assert detect("m", config=with_text).family == "mistral"


REMOTE = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}


@pytest.mark.parametrize(
    "config, expected",
    [
        # model_type of a family: that family (which needs trust_remote_code to load it).
        ({"model_type": "qwen", "architectures": ["QWenLMHeadModel"]}, "qwen"),
        # an architecture of a family under an unknown model_type: that family.
        ({"model_type": "deepseek", "architectures": ["DeepseekForCausalLM"]}, "deepseek"),
        ({"model_type": "phi-msft", "architectures": ["PhiForCausalLM"]}, "phi"),
        # a real causal LM no family owns: generic.
        ({"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"]}, "generic"),
        # vision-language remote code: refused, even when its name is a family's.
        ({"model_type": "qwen", "architectures": ["QWenLMHeadModel"], "visual": {"image_size": 448}}, None),
        ({"model_type": "internvl_chat", "architectures": ["InternVLChatModel"], "vision_config": {}}, None),
        ({"model_type": "phi3_v", "architectures": ["Phi3VForCausalLM"], "vision_config": {}}, None),
        # not a causal LM at all: refused, not generic.
        ({"model_type": "custom_bert", "architectures": ["CustomBertModel"]}, None),
    ],
)
def test_remote_code_models_are_classified_by_what_they_are(config, expected):
    from adaptrix.errors import NotACausalLMError

    config = {**config, "auto_map": REMOTE}
    if expected is None:
        with pytest.raises(NotACausalLMError, match=config["architectures"][0]):
            detect("org/model", config=config, source="config.json")
    else:
        assert detect("org/model", config=config, source="config.json").family == expected


def test_registry_read_from_source_equals_the_imported_mapping():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from adaptrix.models.lm_classes import causal_lm_classes

    expected = {k: v[0] if isinstance(v, (list, tuple)) else v for k, v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()}
    assert causal_lm_classes() == expected
