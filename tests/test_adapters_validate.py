"""Adapter inspection and validation: each error comes from a real malformed or mismatched adapter."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from adaptrix.plugins.host import get_host


@pytest.fixture(scope="module")
def qwen(tiny_model):
    return tiny_model("qwen3")


@pytest.fixture(scope="module")
def adapters(qwen, tiny_model, tmp_path_factory):
    """name -> folder of real adapters, good and bad."""
    from support.adapters import build_variant, make_adapter

    root = tmp_path_factory.mktemp("val-adapters")
    other = tmp_path_factory.mktemp("variants")
    out = {"good": make_adapter(qwen, root / "good", seed=1)}
    out["llama"] = make_adapter(tiny_model("llama"), root / "llama", seed=2)
    wide = build_variant(qwen, other / "qwen-wide", hidden_size=48, head_dim=12)
    out["wide"] = make_adapter(wide, root / "wide", seed=3, base_model=str(qwen))
    out["phi3"] = make_adapter(
        tiny_model("phi3"), root / "phi3", seed=4, target_modules=("qkv_proj", "o_proj"), base_model=str(qwen)
    )
    big_vocab = build_variant(qwen, other / "qwen-vocab", vocab_size=512)
    out["vocab"] = make_adapter(
        big_vocab, root / "vocab", seed=5, target_modules=("q_proj", "embed_tokens"), modules_to_save=["lm_head"],
        base_model=str(qwen),
    )
    out["hub-name"] = make_adapter(qwen, root / "hub-name", seed=6, base_model="Qwen/Qwen3-0.6B")
    return out


@pytest.fixture(scope="module")
def engine(qwen, adapters):
    from adaptrix import Engine

    eng = Engine(model_id=str(qwen), device="cpu", adapters_dir=str(adapters["good"].parent), progress=False)
    eng.initialize()
    yield eng
    eng.cleanup()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit(folder, **changes):
    from support.adapters import edit_config

    edit_config(folder, **changes)
    return folder


def test_info_reads_header_only(adapters, qwen):
    from adaptrix.adapters.info import read_adapter_info

    info = read_adapter_info(adapters["good"], host=get_host())
    assert (info.peft_type, info.rank, info.alpha, info.target_modules) == ("LORA", 4, 8, ("q_proj", "v_proj"))
    assert info.base_model == str(qwen) and info.base_family == "qwen" and info.family_source == "config"
    assert info.tensor_count == 8 and info.tensor_bytes > 0 and info.weights_format == "safetensors"
    assert read_adapter_info(adapters["hub-name"], host=get_host()).family_source == "id"


def test_good_adapter_is_compatible(engine):
    report = engine.validate_adapter("good")
    assert report.ok and report.errors == () and report.warnings == ()
    assert engine.get_model_info()["adapters_loaded"] == []


def test_wrong_family(engine, adapters):
    from adaptrix.errors import AdapterIncompatibleError

    report = engine.validate_adapter(str(adapters["llama"]))
    assert not report.ok
    assert "(family 'llama') but the loaded model" in report.errors[0] and "is family 'qwen'" in report.errors[0]
    with pytest.raises(AdapterIncompatibleError) as err:
        engine.load_adapter(str(adapters["llama"]))
    assert err.value.report == report
    assert engine.get_model_info()["adapters_loaded"] == []


def test_wrong_hidden_size(engine, adapters):
    report = engine.validate_adapter(str(adapters["wide"]))
    text = "\n".join(report.errors)
    assert "model.layers.0.self_attn.q_proj.lora_A.weight (lora_A) takes 48 input features" in text
    assert "has in_features=32" in text


def test_missing_module_fused_qkv(engine, adapters):
    report = engine.validate_adapter(str(adapters["phi3"]))
    text = "\n".join(report.errors)
    assert "target modules ['qkv_proj'] do not exist" in text
    assert "q_proj" in text and "k_proj" in text  # the names the model does have
    assert "belong to modules" in text and "self_attn.qkv_proj" in text


def test_vocab_size_mismatch(engine, adapters):
    text = "\n".join(engine.validate_adapter(str(adapters["vocab"])).errors)
    assert "covers a vocabulary of 512 tokens but embedding model.embed_tokens has 400" in text
    assert "lm_head.weight has shape [512, 32] but lm_head.weight in the model has shape [400, 32]" in text


def test_truncated_safetensors(engine, adapters, tmp_path):
    bad = _copy(adapters["good"], tmp_path / "trunc")
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    report = engine.validate_adapter(str(bad))
    assert not report.ok and "is truncated" in report.errors[0] and "adapter_model.safetensors" in report.errors[0]


def test_bad_json(engine, adapters, tmp_path):
    from adaptrix.errors import AdapterFormatError

    bad = _copy(adapters["good"], tmp_path / "badjson")
    (bad / "adapter_config.json").write_text('{"r": 4,, }')
    report = engine.validate_adapter(str(bad))
    assert not report.ok and "adapter_config.json is not valid JSON (line 1, column 9" in report.errors[0]
    with pytest.raises(AdapterFormatError, match="'badjson'.*not valid JSON"):
        engine.load_adapter(str(bad))


def test_pickle_refused_unless_allowed(engine, adapters, tmp_path):
    from safetensors.torch import load_file

    pkl = _copy(adapters["good"], tmp_path / "pkl")
    torch.save(load_file(str(pkl / "adapter_model.safetensors")), pkl / "adapter_model.bin")
    (pkl / "adapter_model.safetensors").unlink()
    report = engine.validate_adapter(str(pkl))
    assert not report.ok and "is a pickle (adapter_model.bin), which can run code" in report.errors[0]
    assert "allow_pickle=True" in report.errors[0]
    assert engine.validate_adapter(str(pkl), allow_pickle=True).ok
    ids = torch.tensor([engine.tokenizer("Hello").input_ids])
    engine.load_adapter(str(pkl), allow_pickle=True)
    with torch.no_grad():
        got = engine.adapters.generation_model()(ids).logits
    engine.unload_adapter("pkl")
    engine.load_adapter("good")
    with torch.no_grad():
        expected = engine.adapters.generation_model()(ids).logits
    engine.unload_adapter("good")
    assert torch.equal(got, expected)


def test_adapter_that_would_do_nothing(engine, adapters, tmp_path):
    bad = _edit(_copy(adapters["good"], tmp_path / "noop"), target_modules=["k_proj"])
    report = engine.validate_adapter(str(bad))
    assert not report.ok
    assert "would be ignored" in report.warnings[0]
    assert "loaded, it would do nothing" in report.errors[0]


def test_partially_missing_tensors_warn(engine, adapters, tmp_path):
    bad = _edit(_copy(adapters["good"], tmp_path / "partial"), target_modules=["q_proj", "v_proj", "k_proj"])
    report = engine.validate_adapter(str(bad))
    assert report.ok
    assert any("targeted module(s) have no LoRA weights" in w and "k_proj" in w for w in report.warnings)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"use_dora": True}, "option use_dora=True: DoRA adapters are refused"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'; adaptrix loads LORA adapters only"),
        ({"bias": "all"}, "option bias='all'"),
    ],
)
def test_unsupported_options(engine, adapters, tmp_path, changes, expected):
    bad = _edit(_copy(adapters["good"], tmp_path / "opt"), **changes)
    report = engine.validate_adapter(str(bad))
    assert not report.ok and expected in report.errors[0]


def test_checkpoint_name_only_differs_is_a_warning(engine, adapters):
    report = engine.validate_adapter(str(adapters["hub-name"]))
    assert report.ok
    assert "was trained on 'Qwen/Qwen3-0.6B'" in report.warnings[0] and "both family 'qwen'" in report.warnings[0]


def test_not_found_lists_available(engine):
    from adaptrix.errors import AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError, match=r"'nope' not found.*available: .*good"):
        engine.load_adapter("nope")


def test_hub_id_from_offline_cache(engine, adapters, tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's real cache layout with HF_HUB_OFFLINE=1."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    repo = cache / "models--someone--qwen-lora"
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(adapters["good"], snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from adaptrix.adapters.sources import resolve_adapter

    try:
        name, folder = resolve_adapter("someone/qwen-lora", None)
    except Exception as exc:  # pragma: no cover - cache layout differs in this huggingface_hub
        pytest.skip(f"cannot fake the hub cache here: {exc}")
    assert name == "qwen-lora" and (folder / "adapter_config.json").is_file()


EXPECTED = {
    "llama-3.1": ("unsloth/meta-llama-3.1-8b-unsloth-bnb-4bit", "llama"),
    "mistral-7b": ("mistralai/Mistral-7B-Instruct-v0.1", "mistral"),
    "qwen3-14b": ("unsloth/qwen3-14b-unsloth-bnb-4bit", "qwen"),
    "phi-3-mini": ("microsoft/Phi-3-mini-4k-instruct", "phi"),
    "smollm-135m": ("HuggingFaceTB/SmolLM-135M-Instruct", "llama"),
}


def test_real_adapter_configs_are_inspected(fixtures_dir, tmp_path):
    from adaptrix.adapters.info import read_adapter_info

    configs = sorted((fixtures_dir / "adapter-configs").glob("*.json"))
    if not configs:
        pytest.skip("no adapter configs in the shared fixtures")
    seen = set()
    for cfg in configs:
        folder = tmp_path / cfg.stem
        folder.mkdir()
        shutil.copy(cfg, folder / "adapter_config.json")
        info = read_adapter_info(folder, host=get_host())
        assert info.tensor_count is None and info.as_dict()["tensors"] == "absent"
        assert info.peft_type == "LORA" and info.rank and info.target_modules
        for prefix, (base, family) in EXPECTED.items():
            if cfg.name.startswith(prefix):
                assert (info.base_model, info.base_family) == (base, family), cfg.name
                seen.add(prefix)
        assert json.loads(json.dumps(info.as_dict()))  # JSON-able for --json
    assert seen == {p for p in EXPECTED if any(c.name.startswith(p) for c in configs)}


def test_adapter_modules_import_one_way():
    """adapters/: no import circle and no module reaching into another's private names."""
    import ast
    from pathlib import Path

    import adaptrix.adapters

    folder = Path(adaptrix.adapters.__file__).parent
    graph, private = {}, []
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                deps.update(t.split(".")[0] for t in targets)
                if node.module:
                    private += [f"{path.stem} -> {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        graph[path.stem] = deps & {p.stem for p in folder.glob("*.py")}
    assert private == []

    def visit(node, trail):
        assert node not in trail, f"import circle: {' -> '.join(trail + [node])}"
        for dep in graph.get(node, ()):
            visit(dep, trail + [node])

    for module in graph:
        visit(module, [])


def poison(folder, values=(float("nan"), float("inf"))):
    """Write ``values`` into the first float tensor of an adapter's safetensors file, in place."""
    import struct

    import numpy as np

    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k in sorted(header) if k != "__metadata__" and header[k]["dtype"] == "F32")
    start = 8 + n + header[name]["data_offsets"][0]
    data[start:start + 4 * len(values)] = np.array(values, dtype="<f4").tobytes()
    path.write_bytes(bytes(data))
    return name


def test_non_finite_weights_are_refused_naming_file_and_tensor(engine, adapters, tmp_path):
    """Issue 15, item 11: a diverged run's adapter validated "compatible" and answered empty text."""
    bad = _copy(adapters["good"], tmp_path / "diverged")
    tensor = poison(bad)
    report = engine.validate_adapter(str(bad))
    assert not report.ok
    [error] = report.errors
    assert str(bad / "adapter_model.safetensors") in error and f"{tensor} (2 of " in error
    assert "non-finite values (NaN or Inf)" in error and "retrain" in error
    from adaptrix.errors import AdapterIncompatibleError

    with pytest.raises(AdapterIncompatibleError, match="non-finite"):
        engine.load_adapter(str(bad))
    assert "diverged" not in engine.adapters.loaded_names()


def test_non_finite_weights_in_an_allowed_pickle_are_refused(engine, adapters, tmp_path):
    from safetensors.torch import load_file

    pkl = _copy(adapters["good"], tmp_path / "pkl-nan")
    state = load_file(str(pkl / "adapter_model.safetensors"))
    name = sorted(state)[0]
    state[name][0, 0] = float("-inf")
    torch.save(state, pkl / "adapter_model.bin")
    (pkl / "adapter_model.safetensors").unlink()
    report = engine.validate_adapter(str(pkl), allow_pickle=True)
    assert not report.ok and f"{name} (1 of " in report.errors[0]
