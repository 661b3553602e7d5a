"""A llama.cpp model's vocabulary: text <-> token ids, each token's bytes, special and control tokens.

:class:`Vocabulary` is the runtime's (``LlamaRuntime.vocab``; the runtime keeps
``tokenize``, ``detokenize``, ``token_piece`` ... as its own methods, which ask
it). Per-token answers that a token mask or per-token scores look up again and
again (``token_piece``, ``token_id``) are cached. :class:`~.codec.LlamaTextCodec`
builds the engine's tokenizer on the runtime. Imports llama_cpp only through
the runtime that hands it the library.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from adaptrix.errors import GenerationError

from .llama_lib import closed_error


@attrs.frozen
class SpecialTokenIds:
    """The model's special token ids (None where the GGUF defines none)."""

    bos: int | None
    eos: int | None
    #: End of turn (``<|im_end|>``, ``<|eot_id|>``), when the vocabulary has one apart from EOS.
    eot: int | None
    pad: int | None
    unk: int | None
    #: Every end-of-generation token (EOS, EOT, ...): the default stop set.
    eog: frozenset[int]
    add_bos: bool
    add_eos: bool


class Vocabulary:
    """The token side of one loaded model (``ll``: the llama_cpp module; ``vocab``: the model's vocab pointer).

    ``metadata`` reads a GGUF metadata value (the UNK id has no llama.cpp getter).
    Unusable once :meth:`close` ran (the model that owns the pointer is freed).
    """

    def __init__(self, ll, vocab, *, path: Path, metadata: Callable[[str], str | None]):
        self._ll = ll
        self._vocab = vocab
        self.path = path
        self.n_vocab = int(ll.llama_vocab_n_tokens(vocab))
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._token_ids: dict[str, int] | None = None
        self.special = self._special_ids(metadata("tokenizer.ggml.unknown_token_id"))

    def close(self) -> None:
        self._vocab = None

    def check_open(self) -> None:
        if self._vocab is None:
            raise closed_error(self.path)

    def check_token(self, token_id: int) -> None:
        """Raise :class:`GenerationError` unless ``token_id`` is in the vocabulary."""
        self.check_open()
        if not 0 <= int(token_id) < self.n_vocab:
            raise GenerationError(
                f"token id {token_id} is outside the vocabulary of {self.path.name} (0..{self.n_vocab - 1})"
            )

    def tokenize(self, text: str | bytes, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` (or of UTF-8 bytes); ``add_special`` adds BOS/EOS as the model asks,
        ``parse_special`` reads ``<|im_start|>`` as one control token instead of plain text."""
        self.check_open()
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            raise GenerationError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return list(buf[:n])

    def token_piece(self, token_id: int, *, special: bool = True) -> bytes:
        """The bytes one token stands for (possibly part of a UTF-8 character); ``special=False`` gives
        control tokens as empty bytes. For incremental detokenization: join, then decode."""
        key = (token_id, special)
        piece = self._pieces.get(key)
        if piece is None:
            self.check_token(token_id)
            buf = ctypes.create_string_buffer(64)
            n = self._ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def detokenize(self, ids: Sequence[int], *, special: bool = True) -> str:
        """Text of ``ids`` as llama.cpp writes it (it also drops an SPM tokenizer's leading space)."""
        self.check_open()
        for t in ids:
            self.check_token(t)
        arr = (self._ll.llama_token * max(len(ids), 1))(*ids)
        size = 16 + 8 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._ll.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n + 1

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry itself (``"Ġhello"``, ``"<|im_end|>"``)."""
        self.check_token(token_id)
        return self._ll.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry, or None when the vocabulary has no such entry."""
        self.check_open()
        if self._token_ids is None:
            self._token_ids = {self.token_text(t): t for t in reversed(range(self.n_vocab))}
        return self._token_ids.get(text)

    def is_control(self, token_id: int) -> bool:
        """Whether the token is a control token (``<|im_end|>``): markup, not text."""
        self.check_token(token_id)
        return bool(self._ll.llama_vocab_is_control(self._vocab, token_id))

    def is_user_defined(self, token_id: int) -> bool:
        """Whether the token is a user-defined (added) token."""
        self.check_token(token_id)
        return bool(self._ll.llama_vocab_get_attr(self._vocab, token_id) & self._ll.LLAMA_TOKEN_ATTR_USER_DEFINED)

    def _special_ids(self, unk: str | None) -> SpecialTokenIds:
        ll, v = self._ll, self._vocab

        def checked(t: Any) -> int | None:
            try:
                t = int(t) if t is not None else -1
            except ValueError:
                return None
            return t if 0 <= t < self.n_vocab else None

        eog = frozenset(t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(v, t))
        return SpecialTokenIds(
            bos=checked(ll.llama_vocab_bos(v)),
            eos=checked(ll.llama_vocab_eos(v)),
            eot=checked(ll.llama_vocab_eot(v)),
            pad=checked(ll.llama_vocab_pad(v)),
            unk=checked(unk),
            eog=eog,
            add_bos=bool(ll.llama_vocab_get_add_bos(v)),
            add_eos=bool(ll.llama_vocab_get_add_eos(v)),
        )
