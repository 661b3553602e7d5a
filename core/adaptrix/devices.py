"""Turn the user's ``device`` and ``dtype`` strings into torch objects, or a clear error."""

from __future__ import annotations

import os

from .errors import DeviceError

DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def resolve_device(name: str | None):
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` -> ``torch.device``."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this torch build sees no CUDA GPU; use device='cpu'")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' asked for, but Apple MPS is not available here; use device='cpu'")
    return torch.device(name)


def resolve_dtype(name: str | None, device):
    """``auto`` or a dtype name -> ``torch.dtype``.

    ``auto`` is float32 on the CPU (bfloat16 with ``ADAPTRIX_CPU_BF16=1``, see
    :func:`cpu_has_native_bf16`), bf16 (else fp16) on CUDA GPUs and fp16 on Apple MPS.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPE_NAMES:
        raise DeviceError(f"unknown dtype {name!r}; use auto or one of {', '.join(sorted(set(DTYPE_NAMES)))}")
    return getattr(torch, DTYPE_NAMES[name])


def cpu_has_native_bf16() -> bool:
    """Whether ``dtype="auto"`` picks bfloat16 on the CPU: only when ``ADAPTRIX_CPU_BF16=1`` asks for it.

    Measured on this project's CPU (avx512_bf16 and AMX reported), bfloat16
    decoded at 0.94x float32 with the same quality (docs/backends.md), so the
    CPU default stays float32; set ``ADAPTRIX_CPU_BF16=1`` (or pass
    ``dtype="bfloat16"``) where bfloat16 is faster.
    """
    forced = os.environ.get("ADAPTRIX_CPU_BF16", "").strip().lower()
    if forced in ("", "0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    raise DeviceError(f"ADAPTRIX_CPU_BF16={forced!r}: use 1 (bfloat16 on the CPU) or 0 (float32)")
