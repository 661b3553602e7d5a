"""Oracles and stand-ins for the llama.cpp tests and bench: raw llama-cpp-python, tiny GGUF LoRA files."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def no_extra_buffers():
    """Load models as LlamaRuntime does: without CPU repacking buffers (AMX kernels die with SIGILL in this VM)."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def raw_llama(path: Path, *, n_ctx: int, n_threads: int, **kwargs):
    """llama-cpp-python's high-level ``Llama`` on ``path``, configured like a LlamaRuntime with these sizes."""
    from llama_cpp import Llama

    with no_extra_buffers():
        return Llama(
            str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False, **kwargs
        )


def raw_greedy(llama, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy new tokens from raw ``Llama.generate`` (temp=0), stopping at an end-of-generation token."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    llama.reset()
    out: list[int] = []
    for token in llama.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= max_new_tokens:
            break
        out.append(token)
    return out


def write_random_lora(path: Path, base_gguf: Path, *, rank: int = 4, seed: int = 0, scale: float = 0.05,
                      targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down"), layers: range | None = None) -> Path:
    """A GGUF LoRA for ``base_gguf`` with random A/B on ``targets`` (llama.cpp's adapter layout).

    ``lora_a`` has ggml shape ``[n_in, rank]`` and ``lora_b`` ``[rank, n_out]``,
    as llama.cpp's ``convert_lora_to_gguf.py`` writes them.
    """
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(base_gguf))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in targets:
            continue
        if layers is not None and int(parts[1]) not in layers:
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])
        a = (rng.standard_normal((rank, n_in)) * scale).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * scale).astype(np.float32)
        writer.add_tensor(t.name + ".lora_a", a)
        writer.add_tensor(t.name + ".lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
