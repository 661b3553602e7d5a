"""`adaptrix adapters convert SRC DST`: PEFT folder <-> GGUF LoRA through the CLI, refusals, --json, no plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("adaptrix_llamacpp")

from adaptrix.cli.main import main  # noqa: E402
from adaptrix.plugins.host import PluginHost, get_host, set_host  # noqa: E402
from support.adapters import make_adapter  # noqa: E402
from support.tiny_gguf import build_tiny_gguf, write_falcon_stub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MATH = REPO / "examples" / "adapters" / "math_specialist"


def cli(*args) -> int:
    return main([str(a) for a in args])


def tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def peft_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(llama_gguf, llama_adapter, qwen2_adapter)``: tiny float32 GGUF bases and all-q/k/v LoRAs."""
    root = tmp_path_factory.mktemp("convert")
    llama_hf, llama_gguf = build_tiny_gguf("llama", root / "llama")
    qwen_hf, _ = build_tiny_gguf("qwen2", root / "qwen2")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    return (
        llama_gguf,
        make_adapter(llama_hf, root / "llama-ad", target_modules=targets),
        make_adapter(qwen_hf, root / "qwen-ad", target_modules=targets),
    )


@pytest.fixture()
def fresh_host():
    """Plugins reloaded from the environment this test sets; the session's host back afterwards."""
    before = get_host()
    set_host(None)
    yield
    set_host(before)


# -- round trips ---------------------------------------------------------------------------------------------


def test_math_specialist_round_trip_through_the_cli_gives_the_same_tensors(embedded_gguf, tmp_path, capsys):
    """The embedded_gguf model is the default base; q/k rows permuted for llama.cpp come back unpermuted."""
    import gguf

    lora = tmp_path / "math.gguf"
    assert cli("adapters", "convert", MATH, lora) == 0
    assert "gguf-lora" in capsys.readouterr().out
    reader = gguf.GGUFReader(str(lora))
    assert reader.fields["general.type"].contents() == "adapter"
    assert {t.name for t in reader.tensors} >= {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"}

    back = tmp_path / "math-peft"
    assert cli("adapters", "convert", lora, back) == 0
    before, after = tensors(MATH), tensors(back)
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value.astype(np.float32), err_msg=name)
    old, new = peft_config(MATH), peft_config(back)
    for key in ("r", "lora_alpha", "base_model_name_or_path", "task_type"):
        assert new[key] == old[key], key
    assert set(new["target_modules"]) == set(old["target_modules"])


def test_tiny_round_trip_with_base_and_f16(tiny, tmp_path):
    llama_gguf, adapter, _ = tiny
    for dtype, exact in (("f32", True), ("f16", False)):
        lora, back = tmp_path / f"{dtype}.gguf", tmp_path / f"{dtype}-peft"
        assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf, "--dtype", dtype) == 0
        assert cli("adapters", "convert", lora, back, "--base", llama_gguf) == 0
        before, after = tensors(adapter), tensors(back)
        assert sorted(after) == sorted(before)
        for name, value in before.items():
            if exact:
                np.testing.assert_array_equal(after[name], value, err_msg=name)
            else:
                np.testing.assert_allclose(after[name], value, rtol=1e-3, atol=1e-3, err_msg=name)
    assert (tmp_path / "f16.gguf").stat().st_size < 0.6 * (tmp_path / "f32.gguf").stat().st_size


def test_json_output(tiny, tmp_path, capsys):
    llama_gguf, adapter, _ = tiny
    lora = tmp_path / "a.gguf"
    assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf, "--dtype", "f16", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "source": str(adapter), "destination": str(lora), "from_format": "peft", "to_format": "gguf-lora",
        "base": str(llama_gguf), "dtype": "f16", "plugin": "llamacpp",
    }
    assert cli("adapters", "convert", lora, tmp_path / "p", "--json") == 0
    back = json.loads(capsys.readouterr().out)
    assert (back["from_format"], back["to_format"], back["base"], back["dtype"]) == ("gguf-lora", "peft", None, None)


# -- refusals: exit 2, a message naming what and what to do, nothing lost -------------------------------------


def refused(capsys, *args) -> str:
    capsys.readouterr()
    assert cli("adapters", "convert", *args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_existing_destination_needs_overwrite(tiny, tmp_path, capsys):
    llama_gguf, adapter, _ = tiny
    lora = tmp_path / "a.gguf"
    lora.write_bytes(b"keep me")
    err = refused(capsys, adapter, lora, "--base", llama_gguf)
    assert f"DST {lora} already exists" in err and "--overwrite" in err
    assert lora.read_bytes() == b"keep me"
    err = refused(capsys, adapter, lora, "--base", llama_gguf, "--overwrite")  # not an adapter: never replaced
    assert "is not a gguf-lora adapter" in err and lora.read_bytes() == b"keep me"
    lora.unlink()
    assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf, "--dtype", "f16") == 0
    first = lora.read_bytes()
    assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf, "--overwrite") == 0  # an adapter is
    assert lora.read_bytes()[:4] == b"GGUF" and lora.read_bytes() != first

    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    err = refused(capsys, lora, folder, "--overwrite")
    assert "holds something other than an adapter" in err and (folder / "notes.txt").read_text() == "mine"
    assert cli("adapters", "convert", lora, tmp_path / "p2") == 0
    assert cli("adapters", "convert", lora, tmp_path / "p2", "--overwrite") == 0  # an adapter folder is replaced
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_wrong_family_is_refused_before_writing(tiny, tmp_path, capsys):
    llama_gguf, _, qwen_adapter = tiny
    err = refused(capsys, qwen_adapter, tmp_path / "x.gguf", "--base", llama_gguf)
    assert "family 'qwen'" in err and "family 'llama'" in err
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_is_refused_naming_it(tiny, tmp_path, capsys):
    falcon = write_falcon_stub(tmp_path / "falcon.gguf")
    err = refused(capsys, tiny[1], tmp_path / "x.gguf", "--base", falcon)
    assert "architecture 'falcon'" in err and "supports llama, qwen2, qwen3" in err


def test_sources_that_are_not_adapters(tiny, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not an adapter: the folder has no adapter_config.json" in refused(capsys, empty, tmp_path / "x.gguf")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "is neither a PEFT adapter folder nor a file" in refused(capsys, text, tmp_path / "out")
    assert "does not exist" in refused(capsys, tmp_path / "nope", tmp_path / "out")
    model = tiny[0]  # a GGUF model, not a GGUF LoRA
    assert "is not a GGUF LoRA" in refused(capsys, model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_destinations_and_options_that_make_no_sense(tiny, tmp_path, capsys):
    llama_gguf, adapter, _ = tiny
    assert "installed formats: gguf-lora (.gguf)" in refused(capsys, adapter, tmp_path / "x.bin", "--base", llama_gguf)
    lora = tmp_path / "a.gguf"
    assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf) == 0
    assert "give a folder name" in refused(capsys, lora, tmp_path / "b.gguf")
    assert "--dtype f16 applies to PEFT -> gguf-lora" in refused(capsys, lora, tmp_path / "p", "--dtype", "f16")
    assert "--base" in refused(capsys, adapter, tmp_path / "c.gguf", "--base", tmp_path / "missing.gguf")


# -- --overwrite replaces an adapter, never its own input nor anything else (issue 15, item 3) ---------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_with_the_source_inside_dst_keeps_the_source_and_the_folder(tiny, tmp_path, capsys):
    """The issue's sequence: `convert dl dl/pirate.gguf`, then `convert dl/pirate.gguf dl --overwrite`."""
    import shutil

    llama_gguf, adapter, _ = tiny
    dl = tmp_path / "dl"
    shutil.copytree(adapter, dl)
    (dl / "README.md").write_text("my notes")
    (dl / "adaptrix.json").write_text('{"description": "mine"}')
    (dl / "data").mkdir()
    (dl / "data" / "train.jsonl").write_text("{}\n")
    assert cli("adapters", "convert", dl, dl / "pirate.gguf", "--base", llama_gguf) == 0
    before = _snapshot(dl)
    assert cli("adapters", "convert", dl / "pirate.gguf", dl, "--base", llama_gguf, "--overwrite") == 0
    after = _snapshot(dl)
    assert sorted(after) == sorted(before)  # nothing deleted: the source, README.md, adaptrix.json, data/
    for name in ("pirate.gguf", "README.md", "adaptrix.json", "data/train.jsonl"):
        assert after[name] == before[name], name
    for name, value in tensors(adapter).items():  # the adapter was replaced by its own round trip
        np.testing.assert_array_equal(tensors(dl)[name], value, err_msg=name)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_dst_that_would_replace_the_input_is_refused(tiny, tmp_path, capsys):
    import shutil

    llama_gguf, adapter, _ = tiny
    dl = tmp_path / "dl"
    shutil.copytree(adapter, dl)
    lora = tmp_path / "a.gguf"
    assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf) == 0
    # SRC is the file DST's adapter weights would replace
    shutil.copy(lora, dl / "adapter_model.safetensors")
    before = _snapshot(dl)
    err = refused(capsys, dl / "adapter_model.safetensors", dl, "--overwrite")
    assert "destroy its own input" in err and _snapshot(dl) == before
    # DST is the base model file the conversion reads (a GGUF, but no GGUF LoRA)
    base = tmp_path / "base.gguf"
    shutil.copy(llama_gguf, base)
    err = refused(capsys, adapter, base, "--base", base, "--overwrite")
    assert "is not a gguf-lora adapter" in err and base.read_bytes() == llama_gguf.read_bytes()


def test_overwrite_replaces_only_the_adapter_files_of_a_folder(tiny, tmp_path, capsys):
    llama_gguf, adapter, _ = tiny
    lora = tmp_path / "a.gguf"
    assert cli("adapters", "convert", adapter, lora, "--base", llama_gguf) == 0
    out = tmp_path / "out"
    assert cli("adapters", "convert", lora, out) == 0
    (out / "adapter_model.bin").write_bytes(b"an old pickle of the adapter being replaced")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.json").write_text("{}")
    sibling = tmp_path / ".out.old"  # the old code's swap folder name: someone else's here
    sibling.mkdir()
    (sibling / "keep").write_text("keep")
    assert cli("adapters", "convert", lora, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint", "notes.txt"]  # the old .bin went
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint" / "state.json").read_text() == "{}"
    assert (sibling / "keep").read_text() == "keep"


# -- the hook and the plugin-less core ------------------------------------------------------------------------


def test_llamacpp_plugin_provides_gguf_lora_through_the_hook(tmp_path):
    host = PluginHost(environ={**os.environ, "ADAPTRIX_LOAD_PLUGINS": "llamacpp"})
    host.load_entry_points()
    answers = host.pm.hook.adapter_converters()
    formats = [c.format for answer in answers for c in answer]
    assert formats == ["gguf-lora"]
    conv = answers[0][0]
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_text("text")
    assert conv.recognizes(MATH / "adapter_config.json") is False and conv.recognizes(not_gguf) is False


def test_without_the_plugin_the_error_says_what_to_install(tiny, tmp_path, capsys, monkeypatch, fresh_host):
    from importlib import metadata

    others = sorted(ep.name for ep in metadata.entry_points(group="adaptrix") if ep.name != "llamacpp")
    monkeypatch.setenv("ADAPTRIX_LOAD_PLUGINS", ",".join(others))
    llama_gguf, adapter, _ = tiny
    err = refused(capsys, adapter, tmp_path / "x.gguf", "--base", llama_gguf)
    assert "no installed plugin converts adapters to .gguf files (installed formats: none)" in err
    assert "install the plugin that provides the format (adaptrix plugins list" in err
    err = refused(capsys, llama_gguf, tmp_path / "out")
    assert "is neither a PEFT adapter folder nor a file of a format an installed plugin converts" in err
    assert "installed converters: none" in err and "install the plugin that provides the format" in err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "out").exists()


def test_convert_imports_no_torch(embedded_gguf, tmp_path):
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "adaptrix", "adapters", "convert", str(MATH), str(tmp_path / "m.gguf")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "gguf" in imported and not imported & {"torch", "transformers", "peft"}
