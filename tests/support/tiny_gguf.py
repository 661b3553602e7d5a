"""Tiny float32 GGUF models written from the tiny random HF models of :mod:`support.tiny`.

Written the way llama.cpp's ``convert_hf_to_gguf.py`` writes them: gguf's
tensor names, q/k rows permuted for the ``llama`` architecture, the byte-level
BPE vocabulary as a ``gpt2`` tokenizer (tokens, types, merges, special ids)
and the ChatML chat template, so both llama.cpp and transformers load them.
"""

from __future__ import annotations

import json
from pathlib import Path

#: transformers model types a tiny GGUF can be written for (each maps onto a converter architecture).
GGUF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _token_list(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, merges) from a saved byte-level BPE tokenizer.json.

    Added tokens are CONTROL when special (``<|im_end|>``) and USER_DEFINED otherwise (Qwen3's
    ``<think>``), as llama.cpp's converter types them.
    """
    import gguf

    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {t["content"]: bool(t.get("special")) for t in tok.get("added_tokens", [])}
    vocab.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    kind = {True: gguf.TokenType.CONTROL, False: gguf.TokenType.USER_DEFINED}
    types = [int(kind[added[t]] if t in added else gguf.TokenType.NORMAL) for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def write_tiny_gguf(model_dir: Path, out_path: Path) -> Path:
    """Write the HF model in ``model_dir`` (from ``build_tiny_model``) as a float32 GGUF at ``out_path``."""
    import gguf
    from safetensors.numpy import load_file

    from adaptrix_llamacpp.gguf_arch import arch_names, gguf_arch_for_model_type, permute_rows, permuted_heads

    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_type = cfg["model_type"]
    arch = gguf_arch_for_model_type(model_type)
    if arch is None:
        raise ValueError(f"no tiny GGUF writer for model_type {model_type!r}")
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    names = arch_names(arch, n_layers)

    w = gguf.GGUFWriter(str(out_path), arch)
    # transformers reads a "llama" GGUF as mistral when general.name says so (as llama.cpp writes it).
    w.add_name(f"tiny-{model_type}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, types, merges = _token_list(model_dir)
    w.add_tokenizer_model("gpt2")
    # The pre-tokenizer the HF folder really loads with: transformers gives a qwen2 folder Qwen2Tokenizer, whose
    # split keeps digits apart (" 2" -> " ", "2"); llama.cpp's "qwen2" is that split, "gpt-2" the byte-level one.
    w.add_tokenizer_pre("qwen2" if model_type == "qwen2" else "gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    template = tok_cfg.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        w.add_chat_template(template)

    state = load_file(str(model_dir / "model.safetensors"))
    for key in sorted(state):
        module, _, suffix = key.rpartition(".")
        base = names.gguf_name(module)
        if base is None:
            raise ValueError(f"tiny {model_type}: no GGUF name for tensor {key}")
        data = state[key].astype("float32")
        heads = permuted_heads(arch, base, n_head, n_head_kv)
        if heads is not None:
            data = permute_rows(data, heads)
        w.add_tensor(f"{base}.{suffix}", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


def build_tiny_gguf(model_type: str, folder: Path, seed: int = 0, **tokenizer) -> tuple[Path, Path]:
    """``(hf_folder, gguf_path)``: a tiny random ``model_type`` model and its float32 GGUF
    (``tokenizer``: ``extra_tokens``/``chat_template`` of :func:`support.tiny.build_tiny_model`)."""
    from support.tiny import build_tiny_model

    folder = Path(folder)
    hf = build_tiny_model(model_type, folder / "hf", seed=seed, **tokenizer)
    out = folder / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    return hf, write_tiny_gguf(hf, out / f"tiny-{model_type}-f32.gguf")


def write_falcon_stub(path: Path) -> Path:
    """A GGUF model header of an architecture the LoRA converter does not support (falcon), for refusal tests."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
