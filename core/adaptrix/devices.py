"""Turn the user's ``device`` and ``dtype`` strings into torch objects, or a clear error."""

from __future__ import annotations

import functools
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

    ``auto`` is bfloat16 on CPUs that compute it natively (:func:`cpu_has_native_bf16`),
    float32 on other CPUs, bf16 (else fp16) on CUDA GPUs and fp16 on Apple MPS.
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
    """Whether ``dtype="auto"`` picks bfloat16 on this CPU.

    True when the CPU has bfloat16 instructions (x86 ``avx512_bf16`` or AMX
    ``amx_bf16`` in /proc/cpuinfo): bfloat16 weights halve the memory read per
    token, with the same quality on adaptrix's checks (docs/backends.md).
    Elsewhere bfloat16 would be emulated: False. ``ADAPTRIX_CPU_BF16=0`` (or
    ``1``) overrides the detection, e.g. in a VM that reports flags it does not
    enable; ``dtype=`` overrides it per engine.
    """
    forced = os.environ.get("ADAPTRIX_CPU_BF16", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced:
        raise DeviceError(f"ADAPTRIX_CPU_BF16={forced!r}: use 1 (bfloat16 on the CPU) or 0 (float32)")
    return _cpuinfo_bf16()


@functools.lru_cache(maxsize=1)
def _cpuinfo_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
