"""A :class:`~adaptrix.generation.grammar.Grammar` compiled against a model's vocabulary into per-row token masks.

The grammar engine is llguidance (``docs/structured-output.md`` says why, with
``bench/bench_grammar.py``'s numbers). A backend describes its vocabulary once
(:class:`TokenVocabulary`, from ``Runner.token_vocabulary()``); :func:`compiler_for`
keeps one :class:`GrammarCompiler` per runner, which holds the engine's tokenizer
(built once per model: about 0.1 s) and the grammars compiled against it (one per
grammar, copied for each row). Each constrained row decodes with its own
:class:`RowMatcher`:

- :meth:`RowMatcher.blocked`: the tokens the grammar forbids next (a backend sets
  their logits to ``-inf`` before its sampler draws; greedy and temperature alike);
- :meth:`RowMatcher.accept`: the token drawn;
- :attr:`RowMatcher.done`: the grammar is complete and allows nothing more: only an
  end-of-generation token is then allowed, so the row ends as a model's EOS ends it
  (``finish_reason`` ``"eos"``, ``"stop"`` on the server).

:func:`check_grammar` refuses a grammar the engine cannot enforce (an unsupported
schema keyword, a Lark error) with a :class:`~adaptrix.errors.GenerationError` that
names it, before anything is generated. Imports llguidance and numpy inside its
functions; never torch.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Sequence

import attrs

from adaptrix.errors import BackendError, GenerationError
from adaptrix.generation.grammar import Grammar

#: JSON as the constrained rows write it: one line, ``json.dumps``' separators (a small model left free to
#: add whitespace may write newlines until it runs out of tokens).
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

#: Compiled grammars kept per model (the least recently used is dropped first).
MAX_COMPILED = 64


@attrs.frozen(eq=False)
class TokenVocabulary:
    """A model's vocabulary as the grammar engine reads it (``Runner.token_vocabulary()``), in one of two forms:

    - ``tokens``: each token's bytes, control tokens prefixed with ``b"\\xff"``, and ``tokenize(bytes) -> ids``
      (llama.cpp's pieces);
    - ``tokenizer_json``: a Hugging Face ``tokenizer.json`` text (a fast tokenizer's own).
    """

    #: Width of the model's logits (may exceed the tokenizer's size: those ids are never allowed).
    n_vocab: int
    #: The ids that end a row: allowed once the grammar is complete, forced when it allows nothing more.
    eos_ids: tuple[int, ...]
    tokens: tuple[bytes, ...] | None = None
    tokenize: Callable[[bytes], list[int]] | None = None
    tokenizer_json: str | None = None


def grammar_text(grammar: Grammar) -> str:
    """llguidance's grammar for ``grammar`` (JSON written on one line with ``json.dumps``' separators)."""
    from llguidance import LLMatcher

    if grammar.kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(grammar.source, JSON_OPTIONS)
    if grammar.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, JSON_OPTIONS)
    return LLMatcher.grammar_from_lark(grammar.source)


def check_grammar(grammar: Grammar) -> None:
    """Raise :class:`GenerationError` naming what the grammar engine cannot enforce in ``grammar`` (an
    unsupported JSON-schema keyword, an invalid schema or Lark text); nothing when it can."""
    from llguidance import LLMatcher

    try:
        message = LLMatcher.validate_grammar(grammar_text(grammar))
    except ValueError as exc:
        message = str(exc)
    if message:
        raise GenerationError(unenforceable(grammar, message))


def unenforceable(grammar: Grammar, message: str) -> str:
    """The error message for a grammar the engine refused with ``message``."""
    what = {"json_schema": "JSON schema", "json_object": "json_object grammar", "lark": "Lark grammar"}[grammar.kind]
    named = f" {grammar.name!r}" if grammar.name else ""
    keys = re.search(r"Unimplemented keys: \[(.*?)\]", message)
    if keys:
        words = ", ".join(k.strip().strip('"') for k in keys.group(1).split(","))
        return (f"{what}{named} uses keyword(s) {words}, which constrained decoding cannot enforce; remove "
                f"them from the schema (or check the output yourself)")
    return f"{what}{named} cannot be enforced: {message.strip()}; fix the {'schema' if grammar.kind != 'lark' else 'grammar'}"


class RowMatcher:
    """One row's position in its grammar: what it may generate next, and the tokens it generated."""

    def __init__(self, matcher: Any, vocabulary: TokenVocabulary, words: int):
        import numpy as np

        self._m = matcher
        self._n = vocabulary.n_vocab
        self._words = np.zeros(words, dtype=np.int32)
        self._eos_only = np.ones(self._n, dtype=bool)
        self._eos_only[[t for t in vocabulary.eos_ids if t < self._n]] = False
        self._ended = False

    @property
    def done(self) -> bool:
        """The grammar is complete and allows no more text: the row's next token is an end-of-generation token."""
        return self._ended or self._m.is_stopped()

    def blocked(self):
        """A ``bool`` numpy array of ``n_vocab``: True for every token the grammar forbids next."""
        import numpy as np

        if self.done:
            return self._eos_only
        words = self._words
        self._m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        if self._m.is_error():
            raise GenerationError(f"the grammar engine failed on this row: {_first_line(self._m.get_error())}")
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little", count=self._n).view(bool)
        return ~allowed

    def mask(self, logits) -> None:
        """Set the forbidden tokens' entries of a numpy float row (``n_vocab`` logits) to ``-inf``, in place."""
        import numpy as np

        np.copyto(logits, -np.inf, where=self.blocked()[: logits.shape[-1]])

    def accept(self, token: int) -> None:
        """Record the row's next token (one the mask allowed). An end-of-generation token ends the row."""
        if self._ended:
            return
        if not self._eos_only[token]:  # an end-of-generation token
            self._ended = True
            return
        if not self._m.consume_token(int(token)):
            raise GenerationError(f"token {token} breaks the row's grammar: {_first_line(self._m.get_error())}")


def _first_line(message: str) -> str:
    """The engine's error without the grammar it appends."""
    return message.strip().splitlines()[0] if message.strip() else "no detail"


class GrammarCompiler:
    """Compiles grammars against one model's vocabulary; see the module docstring. Thread-safe."""

    def __init__(self, vocabulary: TokenVocabulary):
        self.vocabulary = vocabulary
        self._tokenizer = None
        self._compiled: OrderedDict[Grammar, Any] = OrderedDict()
        self._lock = threading.Lock()

    def tokenizer(self):
        """llguidance's tokenizer of this vocabulary (built at the first call)."""
        if self._tokenizer is None:
            self._tokenizer = _lltokenizer(self.vocabulary)
        return self._tokenizer

    def matcher(self, grammar: Grammar) -> RowMatcher:
        """A fresh :class:`RowMatcher` of ``grammar`` (compiled once per grammar, then copied)."""
        from llguidance import LLMatcher

        with self._lock:
            template = self._compiled.get(grammar)
            if template is None:
                check_grammar(grammar)
                template = LLMatcher(self.tokenizer(), grammar_text(grammar), log_level=0)
                if template.is_error():
                    raise GenerationError(unenforceable(grammar, template.get_error()))
                self._compiled[grammar] = template
                while len(self._compiled) > MAX_COMPILED:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(grammar)
            matcher = template.deep_copy()
        return RowMatcher(matcher, self.vocabulary, (self.vocabulary.n_vocab + 31) // 32)


def _lltokenizer(vocabulary: TokenVocabulary):
    from llguidance import LLTokenizer, TokenizerWrapper

    eos = list(vocabulary.eos_ids)
    if not eos:
        raise BackendError("the model has no end-of-generation token, so a grammar cannot end its rows")
    if vocabulary.tokenizer_json is not None:
        return LLTokenizer(vocabulary.tokenizer_json, n_vocab=vocabulary.n_vocab, eos_token=eos)

    class _Words:  # what llguidance's TokenizerWrapper reads
        eos_token_id = eos[0]
        bos_token_id = None
        special_token_ids: list[int] = []
        tokens = list(vocabulary.tokens or ())

        def __call__(self, text: bytes | str) -> list[int]:
            return vocabulary.tokenize(text.encode("utf-8") if isinstance(text, str) else text)

    words = _Words()
    while len(words.tokens) < vocabulary.n_vocab:
        words.tokens.append(b"")
    return LLTokenizer(TokenizerWrapper(words), n_vocab=vocabulary.n_vocab, eos_token=eos)


_COMPILERS: "weakref.WeakKeyDictionary[Any, GrammarCompiler]" = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def compiler_for(runner: Any) -> GrammarCompiler:
    """The :class:`GrammarCompiler` of a runner's model (built once per runner from ``runner.token_vocabulary()``)."""
    with _COMPILERS_LOCK:
        compiler = _COMPILERS.get(runner)
        if compiler is None:
            compiler = _COMPILERS[runner] = GrammarCompiler(runner.token_vocabulary())
        return compiler


def grammar_options(runner: Any, grammars: Sequence[Grammar | None]) -> dict[str, Any]:
    """``Runner.generate``'s ``grammars=`` keyword for these rows (``{}`` when every row is free, so a runner
    without the ``"grammar"`` capability still runs free rows); :class:`BackendError` when the runner cannot."""
    if all(g is None for g in grammars):
        return {}
    check_capable(runner)
    return {"grammars": list(grammars)}


def check_capable(runner: Any) -> None:
    """Raise :class:`BackendError` unless ``runner`` enforces grammars (its ``"grammar"`` capability)."""
    if "grammar" not in runner.capabilities:
        raise BackendError(
            f"the {runner.backend} backend cannot constrain output to a grammar (structured output); use a backend "
            "that can (transformers, llamacpp) or drop grammar/response_format/json_schema"
        )


def row_matchers(runner: Any, grammars: Sequence[Grammar | None] | None) -> list[RowMatcher | None] | None:
    """A :class:`RowMatcher` per row that has a grammar (``None`` for free rows); ``None`` when no row has one."""
    if not grammars or all(g is None for g in grammars):
        return None
    compiler = compiler_for(runner)
    return [None if g is None else compiler.matcher(g) for g in grammars]
