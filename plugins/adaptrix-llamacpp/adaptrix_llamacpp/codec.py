"""The text side of a llama.cpp model: the subset of a tokenizer the engine uses.

:class:`LlamaTextCodec` encodes and decodes with the GGUF's own vocabulary
(a runtime's :class:`~adaptrix_llamacpp.vocab.Vocabulary`), names the special
tokens and renders the GGUF's chat template with :mod:`adaptrix.generation.chat_template`,
so the llama.cpp path never loads a transformers tokenizer. Its answers equal
those of the transformers tokenizer built from the same GGUF (tests hold it to
that): ``encode`` parses special-token markup in the text as transformers
does, and ``decode(skip_special_tokens=True)`` drops control tokens.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from typing import Any

from adaptrix.generation.chat_template import ChatTemplate
from adaptrix.errors import ChatTemplateError

from .runtime import LlamaRuntime


class LlamaTextCodec:
    """Tokenizer-like view of a runtime's vocabulary (``__call__``, ``encode``, ``decode``, chat template)."""

    padding_side = "left"

    def __init__(self, runtime: LlamaRuntime, *, name: str | None = None):
        self._vocab = runtime.vocab
        self.name = name or runtime.path.name
        sp = runtime.special
        self.bos_token_id, self.eos_token_id, self.unk_token_id = sp.bos, sp.eos, sp.unk
        self.pad_token_id = sp.pad
        self.bos_token = self._text(sp.bos)
        self.eos_token = self._text(sp.eos)
        self.unk_token = self._text(sp.unk)
        self.pad_token = self._text(sp.pad)
        self.chat_template: str | None = runtime.info.chat_template
        self._special_ids: frozenset[int] | None = None

    def _text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self._vocab.token_text(token_id)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """``{"bos_token": ..., "eos_token": ...}`` for the tokens the GGUF defines (chat templates read them)."""
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                 "pad_token": self.pad_token}  # fmt: skip
        return {k: v for k, v in names.items() if v is not None}

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Control tokens and the named special tokens: what ``skip_special_tokens`` drops."""
        if self._special_ids is None:
            vocab = self._vocab
            named = {self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id} - {None}
            self._special_ids = frozenset(named | {t for t in range(vocab.n_vocab) if vocab.is_control(t)})
        return self._special_ids

    @property
    def vocab_size(self) -> int:
        return self._vocab.n_vocab

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; markup such as ``<|im_start|>`` becomes its special token."""
        return self._vocab.tokenize(text, add_special=add_special_tokens, parse_special=True)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; ``skip_special_tokens`` drops control tokens (``<|im_end|>``) and BOS/EOS/PAD."""
        ids = [int(t) for t in ids]
        if skip_special_tokens:
            special = self.all_special_ids
            ids = [t for t in ids if t not in special]
        return self._vocab.detokenize(ids, special=True) if ids else ""

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The id of a vocabulary entry; the UNK id (None when there is no UNK) for an unknown one."""
        found = self._vocab.token_id(token)
        return self.unk_token_id if found is None else found

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self._vocab.token_text(token_id)

    def template(self) -> ChatTemplate | None:
        """The GGUF's chat template bound to this model's special tokens, or None when it has none."""
        if not self.chat_template:
            return None
        return ChatTemplate(self.chat_template, self.special_tokens_map, name=self.name)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """As transformers' ``apply_chat_template`` (text with ``tokenize=False``, else ids without added BOS)."""
        source = chat_template or self.chat_template
        if not source:
            raise ChatTemplateError(
                f"{self.name} has no chat template in its GGUF metadata (tokenizer.chat_template): "
                "pass chat_template= or use the plain prompt format"
            )
        text = ChatTemplate(source, self.special_tokens_map, name=self.name).render(
            messages, add_generation_prompt=add_generation_prompt, **kwargs
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def stream_decoder(self, *, skip_special_tokens: bool = True) -> StreamDecoder:
        """An incremental decoder: feed token ids, get the text they complete (whole UTF-8 characters)."""
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Token ids in, text out as soon as it forms whole UTF-8 characters (built from per-token pieces)."""

    def __init__(self, codec: LlamaTextCodec, skip_special_tokens: bool):
        self._vocab = codec._vocab
        self._skip = codec.all_special_ids if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if token_id in self._skip:
            return ""
        return self._utf8.decode(self._vocab.token_piece(token_id, special=True))

    def flush(self) -> str:
        """Whatever bytes were left incomplete, with replacement characters."""
        return self._utf8.decode(b"", final=True)
