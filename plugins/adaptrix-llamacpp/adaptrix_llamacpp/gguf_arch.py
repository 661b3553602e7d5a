"""What each GGUF architecture the LoRA converter supports looks like on both sides.

The one place that knows, per GGUF ``general.architecture``: the transformers
module names of a decoder layer, their GGUF tensor names (from the ``gguf``
package's own tensor-name map, so they match llama.cpp), and which weights
llama.cpp's converter stores with their rows permuted (q/k of ``llama``-style
rotary embeddings). No torch; importing it imports neither numpy nor gguf
(the permutations take numpy arrays; ``gguf`` is read on first use).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import numpy as np

#: transformers module names (under ``model.layers.{i}.``) of one decoder layer.
_LLAMA_LAYER = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "input_layernorm", "post_attention_layernorm",
)
_LAYER_MODULES: dict[str, tuple[str, ...]] = {
    # GGUF "llama" holds llama and mistral checkpoints (llama.cpp converts both to it).
    "llama": _LLAMA_LAYER,
    "qwen2": _LLAMA_LAYER,
    "qwen3": _LLAMA_LAYER + ("self_attn.q_norm", "self_attn.k_norm"),
}
_GLOBAL_MODULES = ("model.embed_tokens", "model.norm", "lm_head")

#: GGUF architectures whose q/k weight rows llama.cpp's converter permutes
#: (interleaved rotary pairs instead of transformers' rotate-half).
_PERMUTED_QK = {"llama": ("attn_q", "attn_k")}

#: The GGUF architectures the LoRA converter supports (each tested against transformers+peft).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_LAYER_MODULES)
#: transformers ``model_type`` values that map onto each GGUF architecture.
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "llama": ("llama", "mistral"),
    "qwen2": ("qwen2",),
    "qwen3": ("qwen3",),
}


def gguf_arch_for_model_type(model_type: str) -> str | None:
    """The GGUF architecture a transformers ``model_type`` is written as, or ``None`` if unsupported."""
    for arch, types in MODEL_TYPES.items():
        if model_type in types:
            return arch
    return None


@attrs.frozen
class ArchNames:
    """Both-way name map of one architecture at one layer count (module names, no ``.weight``)."""

    arch: str
    hf_to_gguf: dict[str, str]
    gguf_to_hf: dict[str, str]

    def gguf_name(self, hf_module: str) -> str | None:
        return self.hf_to_gguf.get(hf_module)

    def hf_name(self, gguf_base: str) -> str | None:
        return self.gguf_to_hf.get(gguf_base)


@lru_cache(maxsize=32)
def arch_names(arch: str, n_layers: int) -> ArchNames:
    """The name map of ``arch`` with ``n_layers`` blocks, built with gguf's tensor-name map.

    Raises ``KeyError`` for an architecture outside :data:`SUPPORTED_ARCHITECTURES`.
    """
    import gguf

    layer = _LAYER_MODULES[arch]
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
    hf_to_gguf: dict[str, str] = {}
    wanted = list(_GLOBAL_MODULES) + [f"model.layers.{i}.{m}" for i in range(n_layers) for m in layer]
    for hf in wanted:
        g = tmap.get_name(hf)
        if g is None:  # pragma: no cover - a gguf release that dropped a name
            raise KeyError(f"gguf {gguf.__name__} has no tensor name for {hf} in architecture {arch}")
        hf_to_gguf[hf] = g
    return ArchNames(arch, hf_to_gguf, {g: h for h, g in hf_to_gguf.items()})


def permuted_heads(arch: str, gguf_base: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads a tensor's rows are permuted over in ``arch`` (``None``: not permuted)."""
    kinds = _PERMUTED_QK.get(arch, ())
    leaf = gguf_base.rsplit(".", 1)[-1]
    if leaf not in kinds:
        return None
    return n_head if leaf == "attn_q" else n_head_kv


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers (rotate-half) row order -> llama.cpp (interleaved pairs), as llama.cpp's converter does."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rows`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
