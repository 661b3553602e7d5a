"""The llama.cpp model's vocabulary as the grammar engine reads it (:mod:`adaptrix.generation.matcher`).

Each token's bytes as llama.cpp writes it (control tokens, and user-defined
tokens written like ``<...>``, prefixed with ``b"\\xff"``, llguidance's mark of a
special token, as llguidance's own llama.cpp adapter does), and llama.cpp's
tokenizer for the bytes a grammar's literals are made of. The mask a row's
matcher computes is applied to the context's logits before the row's sampler
chain draws (:meth:`.sampling.SamplerChain.sample`). Nothing here imports torch.
"""

from __future__ import annotations

from adaptrix.generation.matcher import TokenVocabulary


def token_vocabulary(runtime, eos_ids) -> TokenVocabulary:
    """The :class:`TokenVocabulary` of ``runtime``'s model; ``eos_ids``: the ids that end a row."""
    vocab = runtime.vocab
    tokens = []
    for t in range(runtime.n_vocab):
        piece = vocab.token_piece(t, special=True)
        special = vocab.is_control(t) or (vocab.is_user_defined(t) and piece.startswith(b"<")
                                         and piece.endswith(b">"))
        tokens.append(b"\xff" + piece if special else piece)
    return TokenVocabulary(
        n_vocab=runtime.n_vocab,
        eos_ids=tuple(eos_ids),
        tokens=tuple(tokens),
        tokenize=lambda data: vocab.tokenize(data, add_special=False, parse_special=False),
    )
