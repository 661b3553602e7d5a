"""Sampling on llama.cpp: a request's settings -> a sampler chain -> the next token.

Semantics follow transformers': ``temperature=0`` is greedy; else the chain is
repetition penalty (over the prompt and the generated tokens, ``logit / p``
when positive, ``logit * p`` when negative) -> OpenAI's presence/frequency
penalties (over the generated tokens only: a second penalties stage that never
sees the prompt) -> logit bias -> temperature -> top-k -> top-p -> a seeded
draw, so one seed repeats one answer. The transformers backend applies the same
rules at the same place (``adaptrix.backends.transformers.logit_rules``).

- :func:`sampling`: the runtime's sampling arguments for a resolved
  :class:`~adaptrix.types.GenerationConfig` (what the runner and the step
  decoder pass to :meth:`~.runtime.LlamaRuntime.generate_tokens` and
  :meth:`~.runtime.LlamaRuntime.sampler`);
- :func:`check_sampling`, :func:`new_chain`: those arguments checked, and built
  into a chain of llama.cpp samplers;
- :class:`SamplerChain`: one chain, drawing from a decoded position's logits.

Stages that change the logits (OpenAI's penalties, logit bias) join the chain in :func:`new_chain`;
a grammar's token mask is written into the logits just before the chain draws
(:meth:`SamplerChain.sample`'s ``matcher``), so no bias can lift a masked token. Nothing here imports
llama_cpp: the runtime hands it in.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from adaptrix.errors import GenerationError
from adaptrix.generation.settings import is_greedy


def sampling(cfg) -> dict[str, Any]:
    """The runtime's sampling arguments for a resolved :class:`~adaptrix.types.GenerationConfig`."""
    greedy = is_greedy(cfg)
    return dict(
        temperature=0.0 if greedy else float(cfg.temperature),
        top_p=1.0 if greedy or cfg.top_p is None else float(cfg.top_p),
        top_k=0 if greedy or cfg.top_k is None else int(cfg.top_k),
        repetition_penalty=1.0 if cfg.repetition_penalty is None else float(cfg.repetition_penalty),
        seed=cfg.seed,
        presence_penalty=float(cfg.presence_penalty or 0.0),
        frequency_penalty=float(cfg.frequency_penalty or 0.0),
        logit_bias=tuple(cfg.logit_bias or ()),
    )


def check_sampling(*, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
                   presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                   logit_bias: Sequence[tuple[int, float]] = ()) -> None:
    """Raise :class:`GenerationError` for a sampling argument out of its range."""
    if temperature < 0:
        raise GenerationError(f"temperature={temperature} must be 0 (greedy) or more")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top_p={top_p} must be in (0, 1]")
    if top_k < 0:
        raise GenerationError(f"top_k={top_k} must be 0 (off) or more")
    if repetition_penalty <= 0:
        raise GenerationError(f"repetition_penalty={repetition_penalty} must be above 0 (1.0 is off)")
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not -2 <= value <= 2:
            raise GenerationError(f"{name}={value} must be from -2 to 2 (0 is off)")
    for token, bias in logit_bias:
        if not -100 <= bias <= 100:
            raise GenerationError(f"logit_bias[{token}]={bias} must be from -100 to 100")


def new_chain(ll, prompt: Sequence[int], *, n_vocab: int, n_ctx: int, temperature: float, top_p: float,
              top_k: int, repetition_penalty: float, seed: int | None, presence_penalty: float = 0.0,
              frequency_penalty: float = 0.0, logit_bias: Sequence[tuple[int, float]] = ()):
    """A llama.cpp sampler chain (a pointer: the caller frees it) that has seen ``prompt`` for the repetition
    penalty (and not for OpenAI's penalties, which count the generated tokens only)."""
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    try:
        if repetition_penalty != 1.0:
            stage = ll.llama_sampler_init_penalties(n_vocab, n_ctx, repetition_penalty, 0.0, 0.0)
            ll.llama_sampler_chain_add(chain, stage)
            for t in prompt:  # transformers penalises the prompt's tokens too
                ll.llama_sampler_accept(chain, t)
        if presence_penalty or frequency_penalty:  # added after the prompt was accepted: it never sees it
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_penalties(
                n_vocab, n_ctx, 1.0, frequency_penalty, presence_penalty))
        if logit_bias:
            biases = (ll.llama_logit_bias * len(logit_bias))(*[ll.llama_logit_bias(int(t), float(b))
                                                               for t, b in logit_bias])
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(n_vocab, len(logit_bias), biases))
        if temperature == 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
        if top_k:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(top_p, 1))
        draw_seed = ll.LLAMA_DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(draw_seed))
        return chain
    except BaseException:
        ll.llama_sampler_free(chain)
        raise


class SamplerChain:
    """A llama.cpp sampler chain (freed by :meth:`close` or garbage collection).

    ``context`` returns the context whose logits it samples (and raises once the runtime is closed).
    """

    def __init__(self, ll, ptr, context: Callable[[], Any], n_vocab: int = 0):
        self._ll = ll
        self._ptr = ptr
        self._context = context
        self._n_vocab = n_vocab
        self._finalizer = weakref.finalize(self, ll.llama_sampler_free, ptr)

    def sample(self, index: int = -1, matcher: Any = None) -> int:
        """The token drawn from the logits of the last decode's ``index``-th token (and accepted by the chain).

        ``matcher`` (a row's :class:`adaptrix.generation.matcher.RowMatcher`): the tokens its grammar forbids
        get ``-inf`` in those logits before the chain draws (greedy or not), and it accepts the token drawn."""
        if matcher is None:
            return int(self._ll.llama_sampler_sample(self._ptr, self._context(), index))
        import numpy as np

        ctx = self._context()
        logits = np.ctypeslib.as_array(self._ll.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        matcher.mask(logits)
        token = int(self._ll.llama_sampler_sample(self._ptr, ctx, index))
        matcher.accept(token)
        return token

    def close(self) -> None:
        self._finalizer()
