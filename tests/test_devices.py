"""dtype="auto": bfloat16 on CPUs with native bf16, float32 elsewhere; ADAPTRIX_CPU_BF16 and dtype= override."""

from __future__ import annotations

import pytest

from adaptrix import devices
from adaptrix.errors import DeviceError


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Point the detection at a fake /proc/cpuinfo with the given flags."""

    def use(flags: str):
        fake = tmp_path / "cpuinfo"
        fake.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
        real_open = open
        monkeypatch.setattr(devices, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k),
                            raising=False)
        devices._cpuinfo_bf16.cache_clear()
        monkeypatch.delenv("ADAPTRIX_CPU_BF16", raising=False)

    yield use
    devices._cpuinfo_bf16.cache_clear()


@pytest.mark.parametrize("flags, expected", [("avx512f avx512_bf16", "bfloat16"), ("amx_tile amx_bf16", "bfloat16"),
                                             ("avx512f", "float32"), ("", "float32")])
def test_auto_follows_the_cpu_flags(cpuinfo, flags, expected):
    import torch

    cpuinfo(flags)
    assert devices.resolve_dtype("auto", torch.device("cpu")) == getattr(torch, expected)
    assert devices.resolve_dtype("float32", torch.device("cpu")) == torch.float32  # an explicit dtype wins


def test_the_environment_overrides_the_detection(cpuinfo, monkeypatch):
    import torch

    cpuinfo("avx512_bf16")
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "0")
    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    cpuinfo("")
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "1")
    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "maybe")
    with pytest.raises(DeviceError, match="ADAPTRIX_CPU_BF16='maybe'"):
        devices.resolve_dtype("auto", torch.device("cpu"))


@pytest.mark.real_weights
def test_the_embedded_model_in_bfloat16_gives_the_demo_answers(monkeypatch):
    """What `make demo` prints on a bf16 CPU: math_specialist's worked answer, as in float32."""
    from pathlib import Path

    from adaptrix import Engine
    from adaptrix.default_model import default_model_path
    from adaptrix.errors import ModelConfigError

    try:
        default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "1")
    math = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "math_specialist"
    e = Engine(progress=False, backend="transformers")
    e.initialize()
    try:
        assert e.get_model_info()["dtype"] == "bfloat16"
        e.load_adapter(str(math))
        assert e.generate("What is 25 times 8?", temperature=0) == (
            "25 × 8 = 20 × 8 + 5 × 8 = 160 + 40 = 200. The answer is 200."
        )
    finally:
        e.cleanup()
