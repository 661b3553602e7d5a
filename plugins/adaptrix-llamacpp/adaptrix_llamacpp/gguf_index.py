"""A GGUF model's layers as adapter validation sees them, from the file header alone.

:func:`read_gguf_model` reads the architecture, head counts and every
tensor's name and shape (no tensor data); :func:`module_index` turns that into
the core's :class:`~adaptrix.adapters.validate.ModuleIndex` with transformers
module names, so a PEFT adapter is checked against a GGUF exactly as it is
checked against a transformers model, without torch.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import attrs

from adaptrix.adapters.validate import ModuleIndex, ModuleSpec
from adaptrix.errors import ModelLoadError
from adaptrix.models.modelconfig import read_gguf_header

from .gguf_arch import arch_names


@attrs.frozen
class GGUFModel:
    """What a GGUF model file's header says about its architecture and tensors."""

    path: Path
    arch: str
    name: str | None
    n_layers: int
    n_head: int
    n_head_kv: int
    #: GGUF tensor name -> shape in numpy (row-major) order, e.g. ``(out_features, in_features)``.
    tensors: dict[str, tuple[int, ...]]

    def fingerprint(self) -> str:
        """Everything a LoRA conversion depends on, as text (two files with equal fingerprints convert alike)."""
        shapes = ";".join(f"{k}={'x'.join(map(str, v))}" for k, v in sorted(self.tensors.items()))
        return f"{self.arch}|{self.name}|{self.n_layers}|{self.n_head}|{self.n_head_kv}|{shapes}"


def read_gguf_model(path: str | os.PathLike) -> GGUFModel:
    """Read a GGUF model's header: architecture, head counts, tensor names and shapes (no data, no numpy)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    try:
        meta, tensors = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it is corrupt or truncated: "
            "re-download it"
        ) from exc
    arch = meta.get("general.architecture")
    if not arch:
        raise ModelLoadError(f"{path} has no general.architecture field; it is not a GGUF model file")
    kind = meta.get("general.type", "model")
    if kind != "model":
        raise ModelLoadError(
            f"{path} is a GGUF {kind!r} file (general.type={kind!r}), not a model; pass the base model's .gguf"
        )
    n_head = meta.get(f"{arch}.attention.head_count")
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    n_layers = meta.get(f"{arch}.block_count")
    if not isinstance(n_head, int) or not isinstance(n_layers, int):
        raise ModelLoadError(
            f"{path}: fields {arch}.attention.head_count ({n_head!r}) and {arch}.block_count ({n_layers!r}) "
            "must be integers; the file is damaged or not a decoder model"
        )
    return GGUFModel(
        path=path,
        arch=str(arch),
        name=meta.get("general.name"),
        n_layers=n_layers,
        n_head=n_head,
        n_head_kv=n_head_kv if isinstance(n_head_kv, int) else n_head,
        tensors=tensors,
    )


def module_index(model: GGUFModel) -> ModuleIndex:
    """The :class:`ModuleIndex` of a GGUF model of a supported architecture, with transformers names.

    Raises ``KeyError`` for an unsupported architecture (check first with
    :data:`~.gguf_arch.SUPPORTED_ARCHITECTURES`).
    """
    names = arch_names(model.arch, model.n_layers)
    params: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor, shape in model.tensors.items():
        base, _, suffix = tensor.rpartition(".")
        hf = names.hf_name(base)
        if hf is not None:
            params.setdefault(hf, {})[suffix] = shape
    embed = params.get("model.embed_tokens", {}).get("weight")
    if "lm_head" not in params and embed is not None:
        params["lm_head"] = {"weight": embed}  # tied: transformers still has an lm_head Linear
    modules: dict[str, ModuleSpec] = {}
    for hf, p in params.items():
        weight = p.get("weight", ())
        if hf == "model.embed_tokens" and len(weight) == 2:
            modules[hf] = ModuleSpec(hf, "embedding", weight[0], weight[1], params=p)
        elif len(weight) == 2:
            modules[hf] = ModuleSpec(hf, "linear", weight[1], weight[0], params=p)
        else:
            modules[hf] = ModuleSpec(hf, "other", None, None, params=p)
    output = "lm_head" if "lm_head" in modules else None
    leaves = sorted({n.rsplit(".", 1)[-1] for n, s in modules.items() if s.kind == "linear" and n != output})
    vocab = embed[0] if embed is not None else None
    return ModuleIndex(modules=modules, linear_leaves=tuple(leaves), vocab_size=vocab, output_name=output)
