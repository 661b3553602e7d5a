"""How much memory a model's weights take, and how much this machine has free; no torch, no weight read.

- :func:`weight_size` counts a model's parameters without opening a weight
  file: from the safetensors index (``metadata.total_size``), the weight files'
  sizes on disk (``os.stat``), a GGUF header's tensor shapes, or, for a Hub
  model not downloaded yet, an estimate from ``config.json``.
- :func:`available_memory` is the memory a new allocation can get now: Linux's
  ``MemAvailable``, bounded by the process's cgroup limit (a container), else
  psutil when installed; ``None`` when unknown. Tests replace it
  (``monkeypatch.setattr(adaptrix.models.memory, "available_memory", ...)``).
- :func:`fits` is the margin: weights plus 10 % plus 512 MiB (activations, the
  KV cache, the runtime).

The dtype decision that uses them is :func:`adaptrix.models.devices.choose_dtype`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import attrs

from adaptrix.models.modelconfig import read_gguf_header

#: Bytes per parameter of the dtypes a model loads in.
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The margin :func:`fits` keeps free beyond the weights.
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 512 * 2**20
#: Bytes per parameter of common GGUF quantizations (llama.cpp's block sizes), for the refusal's options.
GGUF_BYTES = {"Q8_0": 34 / 32, "Q4_K_M": 0.6}
GIB = 2**30


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


@attrs.frozen
class WeightSize:
    """A model's parameter count, the dtype its checkpoint stores, and where the count came from."""

    parameters: int
    #: ``float32``, ``bfloat16``, ``float16``, or ``None`` (quantized or not stated).
    checkpoint_dtype: str | None
    #: Where the count came from, for messages: ``"model.safetensors.index.json"``, ``"the GGUF header"``, ...
    origin: str

    def bytes(self, dtype: str) -> int:
        return self.parameters * BYTES[dtype]

    def describe(self, dtype: str) -> str:
        """``"7.24 B parameters x 4 bytes = 27.0 GiB"``."""
        return f"{_count(self.parameters)} parameters x {BYTES[dtype]} bytes = {gib(self.bytes(dtype))}"


@attrs.frozen
class Available:
    """Memory free for new allocations, in bytes, and what said so."""
    bytes: int
    origin: str

    def __str__(self) -> str:
        return f"{gib(self.bytes)} available ({self.origin})"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def needed(nbytes: int) -> int:
    """Memory that weights of ``nbytes`` need to load and run: the weights plus the margin."""
    return int(nbytes * (1 + MARGIN_FRACTION)) + MARGIN_BYTES


def fits(nbytes: int, available: Available) -> bool:
    return needed(nbytes) <= available.bytes


# -- the checkpoint --------------------------------------------------------------------------------
def checkpoint_dtype(config: dict[str, Any] | None) -> str | None:
    """The dtype the checkpoint stores (``dtype``/``torch_dtype`` in config.json or its ``text_config``).

    ``None`` for a quantized checkpoint (``quantization_config``) or a dtype this module has no size for.
    """
    config = config or {}
    if config.get("quantization_config"):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for source in (config, text):
        for key in ("dtype", "torch_dtype"):
            value = source.get(key)
            if isinstance(value, str):
                name = value.removeprefix("torch.")
                return name if name in BYTES else None
    return None


def weight_size(source) -> WeightSize | None:
    """The parameters of an :class:`adaptrix.models.source.ModelSource`, read without opening a weight file.

    ``None`` when they cannot be told (a Hub model whose config lacks the sizes, say).
    """
    try:
        return _weight_size(source)
    except OSError:  # an unreadable file: the size stays unknown, and loading reports the file
        return None


def _weight_size(source) -> WeightSize | None:
    config = source.config or {}
    if source.gguf_file is not None and source.path is None:
        return _gguf_size(source.gguf_file)
    stored = checkpoint_dtype(config)
    folder = Path(os.path.expanduser(source.path)) if source.path else None
    if folder is not None and folder.is_dir():
        files = _local_weight_bytes(folder)
    else:
        files = _hub_weight_bytes(source.path or source.model_id, source.revision)
    if files is not None and stored is not None:
        nbytes, origin = files
        return WeightSize(nbytes // BYTES[stored], stored, origin)
    estimate = estimate_parameters(config)
    if estimate is None:
        return None
    return WeightSize(estimate, stored, f"estimated from {Path(source.config_source).name}")


def _gguf_size(path: Path) -> WeightSize | None:
    try:
        _, tensors = read_gguf_header(path)
    except (OSError, ValueError):
        return None
    return WeightSize(sum(math.prod(s) for s in tensors.values()), None, f"the GGUF header of {path.name}")


#: Weight file layouts: (index file, the weight files' pattern).
_LAYOUTS = (("model.safetensors.index.json", "*.safetensors"), ("pytorch_model.bin.index.json", "*.bin"))


def _local_weight_bytes(folder: Path) -> tuple[int, str] | None:
    for index, pattern in _LAYOUTS:
        total = _index_total(folder / index)
        if total is not None:
            return total, index
        files = [f for f in folder.glob(pattern) if f.is_file() and f.name != "training_args.bin"]
        if files:
            return sum(f.stat().st_size for f in files), f"the size of {', '.join(sorted(f.name for f in files))}"
    return None


def _index_total(path: Path) -> int | None:
    try:
        total = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
    except (OSError, ValueError, AttributeError):
        return None
    return total if isinstance(total, int) and total > 0 else None


def _hub_weight_bytes(repo_id: str, revision: str | None) -> tuple[int, str] | None:
    """A Hub model's weight bytes from its index (downloaded if needed: a small file) or its cached single file."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of the core
        return None
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        try:
            total = _index_total(Path(hf_hub_download(repo_id, index, revision=revision)))
        except Exception:  # not there, offline, not a repo: try the next layout
            total = None
        if total is not None:
            return total, index
        cached = try_to_load_from_cache(repo_id, single, revision=revision)
        if isinstance(cached, str) and os.path.isfile(cached):
            return os.stat(cached).st_size, f"the size of {single}"
    return None


def estimate_parameters(config: dict[str, Any] | None) -> int | None:
    """A decoder-only transformer's parameter count from its config (attention, MLP or experts, embeddings).

    Within a few percent for Llama/Mistral/Qwen-style models; ``None`` when the sizes are missing.
    """
    config = config or {}
    tc = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def num(*keys) -> int | None:
        for key in keys:
            value = tc.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    hidden, layers, vocab = num("hidden_size", "n_embd", "d_model"), num("num_hidden_layers", "n_layer"), \
        num("vocab_size")
    if not (hidden and layers and vocab):
        return None
    heads = num("num_attention_heads", "n_head") or 1
    kv_heads = num("num_key_value_heads") or heads
    head_dim = num("head_dim") or hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    inter = num("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    experts = num("num_local_experts", "num_experts", "n_routed_experts")
    if experts and experts > 1:
        expert_inter = num("moe_intermediate_size") or inter
        shared = (num("n_shared_experts") or 0) * expert_inter + (num("shared_expert_intermediate_size") or 0)
        mlp = 3 * hidden * (experts * expert_inter + shared) + hidden * experts
    else:
        mlp = 3 * hidden * inter
    tied = tc.get("tie_word_embeddings", config.get("tie_word_embeddings", True))  # transformers: tied unless told
    return layers * (attention + mlp) + vocab * hidden * (1 if tied else 2)


# -- the machine -----------------------------------------------------------------------------------
def available_memory() -> Available | None:
    """Memory a new allocation can get now (the smallest of what the OS and the cgroup allow), or ``None``."""
    found = [a for a in (_meminfo(), _cgroup()) if a is not None]
    if not found:
        found = [a for a in (_psutil(),) if a is not None]
    return min(found, key=lambda a: a.bytes) if found else None


def _meminfo() -> Available | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Available(int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup() -> Available | None:
    """What the process's memory cgroups (v2, or v1) still allow: the tightest of limit - usage + reclaimable
    page cache, over the process's cgroup and its ancestors; ``None`` without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2 (pure, or the hybrid "unified" tree)
            layouts = [(Path("/sys/fs/cgroup"), "memory.max", "memory.current", "inactive_file"),
                       (Path("/sys/fs/cgroup/unified"), "memory.max", "memory.current", "inactive_file")]
        elif "memory" in controllers.split(","):
            layouts = [(Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes",
                        "total_inactive_file")]
        else:
            continue
        for base, limit_name, usage_name, reclaim_key in layouts:
            folder = base / rel.strip().lstrip("/")
            while True:  # the cgroup, then its ancestors up to the mount (a namespaced mount shows fewer)
                level = _cgroup_level(folder, limit_name, usage_name, reclaim_key)
                if level is not None:
                    found.append(level)
                if folder == base or base not in folder.parents:
                    break
                folder = folder.parent
    return min(found, key=lambda a: a.bytes) if found else None


def _cgroup_level(folder: Path, limit_name: str, usage_name: str, reclaim_key: str) -> Available | None:
    try:
        limit_text = (folder / limit_name).read_text().strip()
        if limit_text == "max" or int(limit_text) >= 2**60:
            return None  # no limit at this level
        limit, usage = int(limit_text), int((folder / usage_name).read_text().strip())
    except (OSError, ValueError):
        return None
    reclaimable = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == reclaim_key:
                reclaimable = int(value)
    except (OSError, ValueError):
        pass
    return Available(max(0, limit - usage + reclaimable), f"the cgroup limit {folder / limit_name}")


def _psutil() -> Available | None:
    try:
        import psutil
    except ImportError:
        return None
    return Available(int(psutil.virtual_memory().available), "psutil")


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 avx512_bf16 or AMX, Arm bf16), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False
