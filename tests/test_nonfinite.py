"""Non-finite weights and unbounded composition weights (issue 15, item 11) on llama.cpp, the CLI and the server:
an adapter holding NaN or Inf, or a weight of 1e308, answered 200 with empty text. Now each is refused, naming the
file and tensor or the weight and its range. (The transformers path: tests/test_adapters_validate.py.)"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from adaptrix.adapters.info import read_adapter_info
from adaptrix.cli.main import main
from adaptrix.errors import AdapterError, AdapterIncompatibleError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "adapters"
BOUND = 10.0  # the composition weight bound, adaptrix.adapters.compositions.MAX_COMPOSITION_WEIGHT


def diverged(folder: Path, values=(float("nan"), float("inf"), float("-inf"))) -> str:
    """Copy pirate_style into ``folder`` with ``values`` written into one of its tensors; that tensor's name."""
    shutil.copytree(EXAMPLES / "pirate_style", folder)
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = sorted(k for k in header if k != "__metadata__")[len(header) // 2]
    start = 8 + n + header[name]["data_offsets"][0]
    data[start:start + 4 * len(values)] = np.array(values, dtype="<f4").tobytes()
    path.write_bytes(bytes(data))
    return name


def nonfinite_tensors(info):
    from adaptrix.adapters.validate import nonfinite_tensors

    return nonfinite_tensors(info)


@pytest.fixture(scope="module")
def llama(embedded_gguf):
    """SmolLM2 on llama.cpp with the example adapters (its own engine: these tests load and compose adapters)."""
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix import Engine

    engine = Engine(backend="llamacpp", adapters_dir=str(EXAMPLES), progress=False, threads=1)
    engine.initialize()
    yield engine
    engine.cleanup()


def test_the_example_adapters_are_finite():
    for name in ("math_specialist", "pirate_style"):
        assert nonfinite_tensors(read_adapter_info(EXAMPLES / name)) == []


def test_llamacpp_refuses_non_finite_weights(llama, tmp_path):
    tensor = diverged(tmp_path / "nan")
    with pytest.raises(AdapterIncompatibleError) as caught:
        llama.load_adapter(str(tmp_path / "nan"))
    message = str(caught.value)
    assert str(tmp_path / "nan" / "adapter_model.safetensors") in message and f"{tensor} (3 of " in message
    assert "nan" not in llama.adapters.loaded_names()
    assert llama.generate("Hi", temperature=0, max_new_tokens=2)  # the engine works on


def test_cli_validate_says_incompatible(tmp_path, capsys, embedded_gguf):
    tensor = diverged(tmp_path / "nan")
    capsys.readouterr()
    assert main(["adapters", "validate", str(tmp_path / "nan"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and tensor in report["errors"][0] and "NaN or Inf" in report["errors"][0]


def _safetensors(path: Path, dtype: str, raw: bytes, shape) -> None:
    header = json.dumps({"w": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, len(raw)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)


@pytest.mark.parametrize(
    "dtype, finite, bad",
    [
        ("BF16", [0x3F80, 0xBF80, 0x7F7F], [0x7FC0, 0x7F80, 0xFF80]),  # 1, -1, max; NaN, +Inf, -Inf
        ("F16", [0x3C00, 0x7BFF, 0x0001], [0x7E00, 0x7C00, 0xFC00]),
        ("F8_E5M2", [0x3C, 0x7B, 0x01], [0x7E, 0x7C, 0xFC]),
        ("F8_E4M3", [0x38, 0x7E, 0xFE], [0x7F, 0xFF, 0x7F]),  # E4M3fn: 0x7E is 448, only S.1111.111 is NaN
    ],
)
def test_every_float_dtype_is_checked(tmp_path, dtype, finite, bad):
    width = "<u2" if dtype in ("BF16", "F16") else "u1"
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "target_modules": ["q"]}))
    for values, expected in ((finite, []), (finite + bad, [("w", 3, 6)])):
        _safetensors(folder / "adapter_model.safetensors", dtype, np.array(values, dtype=width).tobytes(),
                     (len(values),))
        assert nonfinite_tensors(read_adapter_info(folder)) == expected


# -- composition weights: finite and bounded, one rule for the library and the server ---------------------------


@pytest.mark.parametrize("weight", [1e308, -1e308, BOUND + 0.5, -11])
def test_composition_weights_are_bounded(llama, weight):
    with pytest.raises(AdapterError, match=r"weights lie in \[-10, 10\]"):
        llama.compose_adapters({"math_specialist": weight}, name=f"w{abs(hash(weight))}", method="cat")


def test_weights_at_the_bound_compose(llama):
    from adaptrix.adapters.compositions import MAX_COMPOSITION_WEIGHT

    assert MAX_COMPOSITION_WEIGHT == BOUND
    llama.compose_adapters({"math_specialist": BOUND, "pirate_style": -BOUND},
                           name="at_bound", method="cat")
    llama.unload_adapter("at_bound")


def test_server_refuses_both_with_400_and_keeps_serving(tmp_path, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app
    from support.server import LiveServer

    ads = tmp_path / "adapters"
    shutil.copytree(EXAMPLES / "math_specialist", ads / "math_specialist")
    diverged(ads / "diverged")
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))

    def make():
        e = Engine(backend="llamacpp", adapters_dir=str(ads), progress=False, threads=1)
        e.initialize()
        return e

    def ask(url, **body):
        return httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}], **body})

    with LiveServer(create_app(make, ServeOptions(adapters_dir=str(ads)))) as srv:
        r = ask(srv.url, model="diverged")
        assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_incompatible", r.text
        assert "non-finite values" in r.json()["error"]["message"]
        for stream in (False, True):
            r = ask(srv.url, model="base", adapters={"math_specialist": 1e308}, stream=stream)
            assert r.status_code == 400, r.text
            assert "weights lie in [-10, 10]" in r.json()["error"]["message"]
        assert ask(srv.url, model="base", adapters={"math_specialist": 0.5}).status_code == 200
        assert ask(srv.url, model="base").status_code == 200
