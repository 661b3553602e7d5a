"""LlamaTextCodec equals the transformers tokenizer built from the same GGUF (the oracle)."""

from __future__ import annotations

import pytest

from adaptrix.errors import ChatTemplateError

pytest.importorskip("llama_cpp")
from adaptrix_llamacpp.codec import LlamaTextCodec  # noqa: E402
from adaptrix_llamacpp.runtime import LlamaRuntime  # noqa: E402

TEXTS = [
    "Hello, world! How are you today?",
    "  leading spaces, trailing tabs\t\t and\nnew\n\nlines  ",
    "Ünïcödé: café, naïve, Größe, 你好世界, こんにちは, 🙂🚀👩‍👩‍👧",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # 12345 67890\n",
    "<|endoftext|>text around <reponame> markup<|im_end|>",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ],
]


@pytest.fixture(scope="module")
def codec(embedded_gguf):
    runtime = LlamaRuntime(embedded_gguf, n_ctx=256, n_threads=1)
    yield LlamaTextCodec(runtime)
    runtime.close()


@pytest.fixture(scope="module")
def hf(embedded_gguf):
    """The oracle: transformers' tokenizer converted from the GGUF file itself (about 30 s)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_gguf.parent), gguf_file=embedded_gguf.name)


@pytest.mark.parametrize("add_special", [True, False])
def test_encode_equals_transformers(codec, hf, add_special):
    for text in TEXTS:
        assert codec.encode(text, add_special_tokens=add_special) == hf(text, add_special_tokens=add_special)[
            "input_ids"
        ], text
        assert codec(text, add_special_tokens=add_special)["input_ids"] == codec.encode(text, add_special)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_equals_transformers(codec, hf, skip):
    control = list(range(17))  # every control token of this vocabulary, between ordinary ones
    sequences = [hf(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    sequences.append([t for c in control for t in (c, 29, 1780)])
    for ids in sequences:
        assert codec.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


def test_special_tokens_equal_transformers(codec, hf):
    assert codec.special_tokens_map == hf.special_tokens_map
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(codec, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    for token in ("<|im_end|>", "<|im_start|>", "Ġhello", "no-such-token-anywhere"):
        assert codec.convert_tokens_to_ids(token) == hf.convert_tokens_to_ids(token), token


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_from_gguf_metadata_renders_as_transformers(codec, hf, generation_prompt):
    assert codec.chat_template == hf.chat_template
    for messages in CONVERSATIONS:
        kw = dict(add_generation_prompt=generation_prompt)
        text = codec.apply_chat_template(messages, tokenize=False, **kw)
        assert text == hf.apply_chat_template(messages, tokenize=False, **kw)
        assert codec.apply_chat_template(messages, tokenize=True, **kw) == hf.apply_chat_template(
            messages, tokenize=True, return_dict=False, **kw
        )


def test_stream_decoder_yields_whole_characters(codec):
    text = "naïve 你好 🙂!"
    ids = codec.encode(text, add_special_tokens=False) + [codec.eos_token_id]
    decoder = codec.stream_decoder()
    parts = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(parts) == text == codec.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in parts)  # never half a character


def test_a_gguf_without_chat_template_is_a_clear_error(codec):
    bare = LlamaTextCodec.__new__(LlamaTextCodec)
    bare.__dict__.update(codec.__dict__, chat_template=None)
    assert bare.template() is None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.apply_chat_template(CONVERSATIONS[0])
