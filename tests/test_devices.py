"""dtype="auto" on the CPU: float32, bfloat16 on request (ADAPTRIX_CPU_BF16=1); dtype= overrides both."""

from __future__ import annotations

import pytest

from adaptrix.errors import DeviceError
from adaptrix.models import devices


def test_auto_is_float32_on_the_cpu_unless_bfloat16_is_asked_for(monkeypatch):
    """bfloat16 decoded at 0.94x float32 on this CPU (docs/backends.md): the CPU default stays float32."""
    import torch

    cpu = torch.device("cpu")
    monkeypatch.delenv("ADAPTRIX_CPU_BF16", raising=False)
    assert devices.resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "1")
    assert devices.resolve_dtype("auto", cpu) == torch.bfloat16
    assert devices.resolve_dtype("float32", cpu) == torch.float32  # an explicit dtype wins
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "0")
    assert devices.resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setenv("ADAPTRIX_CPU_BF16", "maybe")
    with pytest.raises(DeviceError, match="ADAPTRIX_CPU_BF16='maybe'"):
        devices.resolve_dtype("auto", cpu)


@pytest.mark.real_weights
def test_the_embedded_model_in_bfloat16_gives_the_demo_answers(monkeypatch, embedded_gguf):
    """What `make demo` prints on a bf16 CPU: math_specialist's worked answer, as in float32."""
    from pathlib import Path

    from adaptrix import Engine
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
