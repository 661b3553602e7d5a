"""Turn the user's ``device`` and ``dtype`` strings into torch objects, or a clear error."""

from __future__ import annotations

import os

import attrs

from adaptrix.errors import DeviceError, ModelTooLargeError
from adaptrix.models import memory

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


@attrs.frozen
class DtypeChoice:
    """The dtype a model loads in (a torch dtype name) and why, as ``info`` shows it."""
    dtype: str
    reason: str

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def resolve_dtype(name: str | None, device):
    """``auto`` or a dtype name -> ``torch.dtype`` (:func:`choose_dtype`, with nothing known of the model)."""
    return choose_dtype(name, device).torch_dtype()


def choose_dtype(name: str | None, device, source=None) -> DtypeChoice:
    """The one decision of the dtype a model loads in, with the reason.

    - A dtype name is loaded as asked (the way to override ``auto``).
    - ``auto`` on a CUDA GPU: bfloat16 where supported, else float16; on Apple MPS: float16.
    - ``auto`` on the CPU: float32 (bfloat16 with ``ADAPTRIX_CPU_BF16=1``, see :func:`cpu_prefers_bf16`)
      when its weights fit in the available memory with the margin of :func:`adaptrix.models.memory.fits`;
      otherwise the checkpoint's 16-bit dtype (bfloat16 where the CPU computes it natively, and for a
      float32 or quantized checkpoint); when no dtype fits, a :class:`ModelTooLargeError` naming the
      sizes and the options, before any weight is read. The sizes come from ``source`` (an
      :class:`adaptrix.models.source.ModelSource`) through :func:`adaptrix.models.memory.weight_size`, the free memory
      from :func:`adaptrix.models.memory.available_memory`; without a source, or when either is unknown, the
      CPU default stands.
    """
    import torch

    asked = (name or "auto").strip().lower()
    if asked != "auto":
        if asked not in DTYPE_NAMES:
            raise DeviceError(f"unknown dtype {asked!r}; use auto or one of {', '.join(sorted(set(DTYPE_NAMES)))}")
        return DtypeChoice(DTYPE_NAMES[asked], f"dtype={name!r} asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", "auto on a CUDA GPU that supports bfloat16")
        return DtypeChoice("float16", "auto on a CUDA GPU without bfloat16")
    if device.type == "mps":
        return DtypeChoice("float16", "auto on Apple MPS")

    preferred = "bfloat16" if cpu_prefers_bf16() else "float32"
    why = "ADAPTRIX_CPU_BF16=1" if preferred == "bfloat16" else "the CPU default"
    size = memory.weight_size(source) if source is not None else None
    available = memory.available_memory() if size is not None else None
    if size is None or available is None:
        unknown = "the model's size" if size is None else "the available memory"
        return DtypeChoice(preferred, f"auto: {why} ({unknown} unknown, so not checked)")
    if memory.fits(size.bytes(preferred), available):
        return DtypeChoice(preferred, f"auto: {why}; its weights, {size.describe(preferred)} ({size.origin}), "
                                      f"fit in {available}")
    half = _half_dtype(size.checkpoint_dtype)
    if half != preferred and memory.fits(size.bytes(half), available):
        return DtypeChoice(half, f"auto: {preferred} weights, {size.describe(preferred)} ({size.origin}), would not "
                                 f"fit in {available} with a margin; {half} ({memory.gib(size.bytes(half))}) does, "
                                 f"{_half_why(half, size.checkpoint_dtype)}")
    raise _too_large(source.model_id, size, available)


def _half_dtype(stored: str | None) -> str:
    """The 16-bit dtype to load a checkpoint stored in ``stored`` in, on this CPU."""
    if stored == "float16" and not _computes_bf16():
        return "float16"
    return "bfloat16"


def _half_why(half: str, stored: str | None) -> str:
    if stored == half:
        return "the checkpoint's own dtype"
    if half == "bfloat16" and _computes_bf16():
        return f"computed natively by this CPU (the checkpoint stores {stored or 'a quantized or unstated dtype'})"
    return f"float32's range in 16 bits (the checkpoint stores {stored or 'a quantized or unstated dtype'})"


def _computes_bf16() -> bool:
    return memory.cpu_computes_bf16()


def _too_large(model: str, size, available) -> "ModelTooLargeError":
    quants = ", ".join(f"{q} about {memory.gib(size.parameters * b)}" for q, b in memory.GGUF_BYTES.items())
    return ModelTooLargeError(
        f"{model} does not fit in memory in any dtype: {size.describe('float32')} in float32, "
        f"{size.describe('bfloat16')} in bfloat16/float16 (from {size.origin}), and loading needs "
        f"{memory.MARGIN_FRACTION:.0%} + {memory.gib(memory.MARGIN_BYTES)} more; {available}. Nothing was loaded. Options: a quantized GGUF of it on "
        f"a backend that runs GGUF files (`adaptrix plugins list` shows the installed backends; e.g. an "
        f"owner/repo-GGUF:Q4_K_M; {quants}), a smaller model, or more free "
        "memory; an explicit dtype (dtype='bfloat16') loads without this check"
    )


def cpu_prefers_bf16() -> bool:
    """Whether ``dtype="auto"`` prefers bfloat16 on the CPU: only when ``ADAPTRIX_CPU_BF16=1`` asks for it.

    Measured on this project's CPU (avx512_bf16 and AMX reported), bfloat16
    decoded at 0.94x float32 with the same quality (docs/backends.md), so the
    CPU default stays float32 for a model that fits; set ``ADAPTRIX_CPU_BF16=1``
    (or pass ``dtype="bfloat16"``) where bfloat16 is faster.
    """
    forced = os.environ.get("ADAPTRIX_CPU_BF16", "").strip().lower()
    if forced in ("", "0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    raise DeviceError(f"ADAPTRIX_CPU_BF16={forced!r}: use 1 (bfloat16 on the CPU) or 0 (float32)")
