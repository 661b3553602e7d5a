"""Tiny random models of every family's real architecture, saved to disk.

Each is built from ``AutoConfig.for_model(model_type, ...)`` with small sizes
and saved with ``save_pretrained`` together with a small byte-level BPE
tokenizer (with a ChatML chat template), so tests go through the real
``from_pretrained`` path. A few hundred thousand parameters at most.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "What is machine learning? Machine learning is a field of computer science.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b): return a + b  # Python code",
    "What is 25 times 8? 25 times 8 is 200. Compute 47 + 38 = 85.",
    "My name is Alice. Hello, how are you today? I am fine, thank you.",
    "user assistant system 0 1 2 3 4 5 6 7 8 9 the a an of to in and is it",
] * 4

SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

DEEPSEEK_MLA = dict(
    n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, q_lora_rank=16, kv_lora_rank=16,
    qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8, first_k_dense_replace=1, n_group=1,
    topk_group=1, n_shared_experts=1, num_key_value_heads=4,
)
QWEN_MOE_SHARED = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32)

#: model_type -> extra config keys that make a small, valid instance.
ARCH_EXTRAS: dict[str, dict] = {
    "qwen2": {},
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32),
    "qwen3": dict(head_dim=8),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8),
    "phi": {},
    "phi3": {},
    "phimoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "llama": {},
    "mistral": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gemma": dict(head_dim=8),
    "gemma2": dict(head_dim=8),
    "gemma3_text": dict(head_dim=8),
    "deepseek_v3": DEEPSEEK_MLA,
    # Types each family claims because transformers knows them (issue 8): newest generations.
    "deepseek_v2": DEEPSEEK_MLA,
    "deepseek_v32": dict(DEEPSEEK_MLA, index_n_heads=2, index_head_dim=8, index_topk=4),
    "deepseek_v4": {},
    "gemma3n_text": dict(
        head_dim=8, num_kv_shared_layers=0, laurel_rank=4, hidden_size_per_layer_input=4, altup_num_inputs=2,
        activation_sparsity_pattern=[0.0, 0.0],
    ),
    "gemma4_text": dict(head_dim=8),
    "gemma4_unified_text": dict(head_dim=8),
    "llama4_text": {},
    "ministral": dict(sliding_window=64, head_dim=8),
    "ministral3": {},
    "qwen3_5_text": dict(head_dim=8, layer_types=["linear_attention", "full_attention"]),
    "qwen3_5_moe_text": dict(head_dim=8, layer_types=["linear_attention", "full_attention"], **QWEN_MOE_SHARED),
    "qwen3_next": dict(head_dim=8, layer_types=["linear_attention", "full_attention"], **QWEN_MOE_SHARED),
    "gpt2": {},
    "stablelm": {},
    # Types a family claims although their name does not start with the family's (issue 15, item 16).
    "recurrent_gemma": dict(head_dim=8, lru_width=32, attention_window_size=16, block_types=["recurrent", "attention"]),
    "vaultgemma": dict(head_dim=8),
    "internlm3": {},
    "iquestcoder": {},
}

#: model_type -> the family a person expects adaptrix to report.
EXPECTED_FAMILY = {
    "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen", "qwen3_moe": "qwen",
    "phi": "phi", "phi3": "phi", "phimoe": "phi",
    "llama": "llama", "mistral": "mistral", "mixtral": "mistral",
    "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma",
    "deepseek_v3": "deepseek", "stablelm": "generic",
    "gpt2": "generic",  # Conv1D layers, not nn.Linear: generic's all-linear must still find them
}

#: Types a family claims because the installed transformers knows them (issue 8): the newest
#: generations, and vision-language checkpoints whose language model loads as a text-only causal LM.
#: Load-tested (tests/test_family_models.py), not trained.
NEWER_FAMILY = {
    "deepseek_v2": "deepseek", "deepseek_v32": "deepseek", "deepseek_v4": "deepseek",
    "gemma3n_text": "gemma", "gemma4_text": "gemma", "gemma4_unified_text": "gemma",
    "llama4_text": "llama", "ministral": "mistral", "ministral3": "mistral",
    "qwen3_5_text": "qwen", "qwen3_5_moe_text": "qwen", "qwen3_next": "qwen",
    "gemma3": "gemma", "mistral3": "mistral",
    # Named otherwise, yet the family's: declared by the plugins (MODEL_TYPES) or owned through their
    # language model (a LLaVA checkpoint runs as its Llama).
    "recurrent_gemma": "gemma", "vaultgemma": "gemma", "internlm3": "llama", "iquestcoder": "llama",
    "mllama": "llama", "llava": "llama",
}

#: Vision-language model_type -> extra keys of its (tiny) config; ``text`` and ``vision`` go to those parts.
VL_EXTRAS: dict[str, dict] = {
    "gemma3": dict(mm_tokens_per_image=4),
    "mistral3": {},
    # Llama 3.2 Vision: cross-attention layers in the language model, a two-stage vision encoder.
    "mllama": dict(
        text=dict(cross_attention_layers=[1]),
        vision=dict(attention_heads=4, num_hidden_layers=2, num_global_layers=1, intermediate_layers_indices=[0],
                    vision_output_dim=64),
    ),
    "llava": {},
}
VISION_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8)


def build_tokenizer(extra_tokens=(), chat_template: str | None = None):
    """The tiny byte-level BPE tokenizer; ``extra_tokens`` are added as plain (non-special) tokens,
    as Qwen3 adds ``<think>``/``</think>``; ``chat_template`` replaces the ChatML one."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIALS, show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    if extra_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_tokens])
    tok.chat_template = chat_template or CHATML
    return tok


def build_tiny_model(
    model_type: str, folder: Path, seed: int = 0, *, extra_tokens=(), chat_template: str | None = None,
    context: int | None = None,
) -> Path:
    """Save a tiny random ``model_type`` model plus tokenizer into ``folder`` (see :func:`build_tokenizer`);
    ``context``: its context window instead of 256 tokens (long templates, tools)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    tok = build_tokenizer(extra_tokens, chat_template)
    vocab = len(tok)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = dict(vocab_size=vocab, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    if model_type in VL_EXTRAS:  # a vision-language checkpoint, as published
        from transformers import AutoModelForImageTextToText

        extras = dict(VL_EXTRAS[model_type])
        default = AutoConfig.for_model(model_type)
        text = {"model_type": default.text_config.model_type, **SMALL, **ids, "head_dim": 8, **extras.pop("text", {})}
        vision = {"model_type": default.vision_config.model_type, **VISION_SMALL, **extras.pop("vision", {})}
        cfg = AutoConfig.for_model(model_type, text_config=text, vision_config=vision, **extras)
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(cfg)
    else:
        longer = {"max_position_embeddings": context} if context else {}
        cfg = AutoConfig.for_model(model_type, **ids, tie_word_embeddings=False,
                                   **{**SMALL, **ARCH_EXTRAS[model_type], **longer})
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    # Random init at std 0.02 makes every logit nearly equal; widen it so greedy
    # decoding is decisive and comparisons against an oracle are meaningful.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
