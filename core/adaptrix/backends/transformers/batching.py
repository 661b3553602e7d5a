"""Iteration-level (continuous) batching on the transformers backend.

:class:`TransformersStepDecoder` runs one decode step at a time for a set of rows that may
each use a different adapter. New rows are prefilled (those that arrive together
in one padded forward pass), then their KV caches are merged into the running
batch (left padding); finished or cancelled rows leave between steps. Greedy
rows get the tokens they would get alone up to floating-point effects of the
batch shape: a batch's matmuls (and the mixed-adapter LoRA path, with each
adapter's scaling folded into its ``B``) may round differently from a row
alone, which can, rarely, change a greedy answer.

``batch_invariant=True`` computes each row exactly as ``generate`` computes the
request alone: every row keeps its own KV cache, is prefilled alone and steps in
a forward pass of its own through the module ``generate`` uses, with its
adapter made active by the adapter manager's scope (one scope per adapter per
step). Greedy answers then equal ``generate``'s whatever runs beside them, at
the cost of one forward pass per row (``bench/bench_batch_invariance.py``).

The runner builds the decoder (:meth:`TransformersRunner.step_decoder
<adaptrix.backends.transformers.runner.TransformersRunner.step_decoder>`) from
what it owns, and the decoder reaches nothing else:

- the model's config (the KV cache's layout) and the tokenizer;
- ``decoding_model(adapters)`` -> the module and the per-row adapter kwargs
  (peft ``adapter_names`` through the adapter manager's mixed-adapter forward);
- ``scope(adapter)`` -> the adapter manager's scope, the one ``generate`` runs a
  request in (batch-invariant mode);
- ``lease``: the engine's model lease, held while the decoder runs the model.

Rows are :class:`adaptrix.generation.steps.Row` with this backend's state
(:class:`TransformersRow`); they end, release their tail and become a result
through the shared :mod:`adaptrix.generation.steps`.

Caches of sliding-window or recurrent layers are not merged: :func:`supported`
says whether a model can be batched this way.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Sequence

import attrs

from adaptrix.backends.transformers import grammar_mask
from adaptrix.backends.transformers.logit_rules import logit_rules
from adaptrix.generation.lease import ModelLease
from adaptrix.generation.result import GenerationResult, PreparedRequest
from adaptrix.generation.settings import is_greedy
from adaptrix.generation.steps import Item, Row, add_each, row_result, row_tail

#: Most padded prompt tokens prefilled in one forward pass by :meth:`StepDecoder.add_many`
#: (bounds the activations and attention scores of a group).
PREFILL_TOKENS = 2048


def supported(config) -> bool:
    """Whether a model of this ``config`` can be decoded by :class:`TransformersStepDecoder` (plain KV cache per layer)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=config)
        return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    except Exception:
        return False


@attrs.define(eq=False)
class TransformersRow(Row):
    """A :class:`~adaptrix.generation.steps.Row` with this backend's state."""

    processors: Any = None
    generator: Any = None
    history: Any = None  # prompt + generated ids (tensor), for repetition penalty
    cache: Any = None  # batch-invariant mode: the row's own DynamicCache and [1, T] mask
    matcher: Any = None  # the row's grammar (adaptrix.generation.matcher.RowMatcher); None: free
    mask: Any = None


class TransformersStepDecoder:
    """Decode many rows together, one token per row per :meth:`step`
    (an :class:`adaptrix.generation.steps.StepDecoder`)."""

    def __init__(self, *, config: Any, tokenizer: Any,
                 decoding_model: Callable[[list[str | None]], tuple[Any, dict]],
                 scope: Callable[[str | None], ContextManager], lease: ModelLease, batch_invariant: bool = False,
                 grammar_matcher: Callable[[Any], Any] = lambda grammar: None):
        """``decoding_model(adapters) -> (module, kwargs)`` serving row i with ``adapters[i]`` (the pair stays
        valid while those adapters stay loaded); ``scope(adapter)``: that adapter active for the body;
        ``grammar_matcher(grammar)``: a row matcher of a request's grammar (``None`` for a free row)."""
        self._grammar_matcher = grammar_matcher
        self.config = config
        self.tokenizer = tokenizer
        self._decoding_model = decoding_model
        self._scope = scope
        self._lease = lease
        #: Each row computed alone, as ``generate`` computes it (see the module docstring).
        self.batch_invariant = bool(batch_invariant)
        self.rows: list[TransformersRow] = []
        self._cache = None  # DynamicCache of the batch, [B, H, T, D] per layer
        self._mask = None  # [B, T] long
        self._forward = None  # (adapters tuple, module, kwargs)

    # -- rows -------------------------------------------------------------------
    def add(self, key: Any, prepared: PreparedRequest, adapter: str | None) -> tuple[TransformersRow, str]:
        """Prefill a new row, pick its first token and merge it into the batch.

        Returns the row and the text its first token releases (may be empty).
        """
        with self._lease:
            return self._prefill([(key, prepared, adapter)])[0]

    def add_many(self, items: Sequence[Item]) -> list:
        """:meth:`add` for several ``(key, prepared, adapter)``, prompts of similar length prefilled together.

        One padded forward pass per group (adapters mixed per row) instead of
        one per prompt: newcomers that arrive together stall the running rows
        once. Returns, per item in order, ``(row, text)`` or the exception that
        item raised; a group that fails is retried one prompt at a time, so one
        bad request fails alone.
        """
        if self.batch_invariant:
            return add_each(self, items)
        with self._lease:
            return self._add_groups(items)

    def _add_groups(self, items: Sequence[Item]) -> list:
        out: list = [None] * len(items)
        for group in _groups([len(p.input_ids) for _, p, _ in items]):
            try:
                for i, result in zip(group, self._prefill([items[i] for i in group])):
                    out[i] = result
            except Exception as exc:
                alone = [exc] if len(group) == 1 else add_each(self, [items[i] for i in group])
                for i, result in zip(group, alone):
                    out[i] = result
        return out

    def _prefill(self, items) -> list[tuple[TransformersRow, str]]:
        """One forward pass over left-padded prompts; merges the rows into the batch only if it succeeds
        (batch-invariant: one prompt, its row keeps its own cache)."""
        import torch

        rows = []
        for key, prepared, adapter in items:
            processors, generator = _sampling(prepared.settings, len(prepared.input_ids))
            rows.append(TransformersRow.open(key, prepared, adapter, self.tokenizer, processors=processors,
                                             generator=generator, matcher=self._grammar_matcher(prepared.grammar)))
        with self._forward_for(rows) as (module, kwargs):
            out, mask = self._prefill_forward(rows, module, kwargs)
        tokens = []
        for i, row in enumerate(rows):
            row.history = torch.tensor([list(row.prepared.input_ids)], dtype=torch.long, device=_device(module))
            row.position = len(row.prepared.input_ids)
            tokens.append((self._pick(row, out.logits[i : i + 1, -1, :]), out.logits[i, -1]))
        if self.batch_invariant:
            (row,) = rows
            row.cache, row.mask = out.past_key_values, mask
            self.rows.append(row)
        else:
            self._merge(rows, out.past_key_values, mask)
        return [(row, self._accept(row, token, logits)) for row, (token, logits) in zip(rows, tokens)]

    def _prefill_forward(self, rows, module, kwargs):
        """The prefill forward pass of ``rows``' left-padded prompts: ``(output, [n, T] mask)``."""
        import torch
        from transformers import DynamicCache

        device = _device(module)
        prompts = [list(r.prepared.input_ids) for r in rows]
        width = max(len(p) for p in prompts)
        pad = [r.prepared.pad_id if r.prepared.pad_id is not None else 0 for r in rows]
        ids = torch.tensor([[pad[i]] * (width - len(p)) + p for i, p in enumerate(prompts)], dtype=torch.long,
                           device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0).to(device)
        cache = DynamicCache(config=self.config)
        with torch.inference_mode():
            out = module(
                input_ids=ids, attention_mask=mask.to(device), position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1, **kwargs,
            )
        return out, mask

    def remove(self, row: TransformersRow) -> None:
        """Take a row out of the batch (finished or cancelled)."""
        with self._lease:
            self._remove(row)

    def close(self) -> None:
        """Remove every row."""
        for row in list(self.rows):
            self.remove(row)

    def _remove(self, row: TransformersRow) -> None:
        if self.batch_invariant:
            self.rows.remove(row)
            row.cache = row.mask = None
            return
        i = self.rows.index(row)
        keep = [j for j in range(len(self.rows)) if j != i]
        self.rows.pop(i)
        if not self.rows:
            self._cache, self._mask, self._forward = None, None, None
            return
        index = keep
        self._mask = self._mask[index]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        # drop columns that are padding for every remaining row
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    # -- decoding -----------------------------------------------------------------
    def step(self) -> list[tuple[TransformersRow, str]]:
        """One forward pass for every unfinished row; returns ``(row, text released)`` per row.

        Rows that finish get ``finish_reason`` set; the caller removes them.
        """
        rows = [r for r in self.rows if r.finish_reason is None]
        if not rows:
            return []
        assert len(rows) == len(self.rows), "remove finished rows before the next step"
        with self._lease:
            return self._step_apart() if self.batch_invariant else self._step_together()

    def _step_together(self) -> list[tuple[TransformersRow, str]]:
        """:meth:`step` for the batch: one forward pass, adapters mixed per row."""
        import torch

        module, kwargs = self._module(tuple(r.adapter for r in self.rows))
        device = _device(module)
        last = torch.tensor([[r.generated[-1]] for r in self.rows], dtype=torch.long, device=device)
        mask = torch.cat([self._mask, torch.ones((len(self.rows), 1), dtype=self._mask.dtype)], dim=1)
        positions = torch.tensor([[r.position] for r in self.rows], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = module(
                input_ids=last, attention_mask=mask, position_ids=positions, past_key_values=self._cache,
                use_cache=True, **kwargs,
            )
        self._mask = mask
        events = []
        for i, row in enumerate(self.rows):
            row.position += 1
            token = self._pick(row, out.logits[i : i + 1, -1, :])
            events.append((row, self._accept(row, token, out.logits[i, -1])))
        return events

    def finish(self, row: TransformersRow) -> GenerationResult:
        """The result ``generate`` would return for this row's tokens."""
        return row_result(row, self.tokenizer)

    def tail(self, row: TransformersRow) -> str:
        """Text still held back by the row's pipeline, released at its end."""
        return row_tail(row)

    def _step_apart(self) -> list[tuple[TransformersRow, str]]:
        """:meth:`step` in batch-invariant mode: a forward pass per row, rows of one adapter under one scope."""
        import torch

        groups: dict[Any, list[TransformersRow]] = {}
        for row in self.rows:
            groups.setdefault(row.adapter, []).append(row)
        picked: dict[int, int] = {}
        for members in groups.values():
            with self._forward_for(members[:1]) as (module, kwargs):
                device = _device(module)
                for row in members:
                    mask = torch.cat([row.mask, torch.ones((1, 1), dtype=row.mask.dtype)], dim=1)
                    with torch.inference_mode():
                        out = module(
                            input_ids=torch.tensor([[row.generated[-1]]], dtype=torch.long, device=device),
                            attention_mask=mask.to(device), position_ids=torch.tensor([[row.position]], device=device),
                            past_key_values=row.cache, use_cache=True, **kwargs,
                        )
                    row.mask = mask
                    picked[id(row)] = (self._pick(row, out.logits[:, -1, :]), out.logits[0, -1])
        events = []
        for row in self.rows:
            row.position += 1
            events.append((row, self._accept(row, *picked[id(row)])))
        return events

    # -- internals ------------------------------------------------------------------
    @contextlib.contextmanager
    def _forward_for(self, rows: Sequence[TransformersRow]):
        """``(module, kwargs)`` serving ``rows`` for the body. Batched: the mixed-adapter forward for the rows'
        adapters. Batch-invariant (rows of one adapter): the module ``generate`` calls, with that adapter
        active through the adapter manager's scope, exactly as ``generate`` runs the request alone."""
        if not self.batch_invariant:
            yield self._module(tuple(r.adapter for r in rows))
            return
        (adapter,) = {r.adapter for r in rows}
        with self._scope(adapter):
            module, kwargs = self._decoding_model([])  # no per-row adapters: the active ones apply
            yield module, kwargs

    def _module(self, adapters: tuple):
        if self._forward is None or self._forward[0] != adapters:
            module, kwargs = self._decoding_model(list(adapters))
            self._forward = (adapters, module, kwargs)
        return self._forward[1], self._forward[2]

    def _pick(self, row: TransformersRow, logits) -> int:
        import torch

        scores = logits.float()
        if row.matcher is not None:  # before the processors, as in generate (penalty, mask, then warpers)
            scores = grammar_mask.mask_row(row.matcher, scores)
        if row.processors is not None:
            scores = row.processors(row.history, scores)
        if is_greedy(row.prepared.settings):
            return int(torch.argmax(scores, dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _accept(self, row: TransformersRow, token: int, logits) -> str:
        """Take ``token``, picked from the raw ``logits`` (``(vocab,)``: the row's logprob, when it asks)."""
        import torch

        row.history = torch.cat([row.history, torch.tensor([[token]], device=row.history.device)], dim=1)
        if row.matcher is not None:
            row.matcher.accept(token)
        return row.accept(token, logits if row.wants_logprobs else None)

    def _merge(self, rows: list[TransformersRow], cache, mask) -> None:
        """Append ``rows`` (their prefill ``cache`` and ``[n, T]`` ``mask``) to the batch, left-padding the narrower."""
        import torch

        if self._cache is None:
            self._cache, self._mask = cache, mask
            self.rows.extend(rows)
            return
        width, length = self._mask.shape[1], mask.shape[1]
        if length < width:
            _pad_left(cache, width - length)
            mask = torch.cat([mask.new_zeros((mask.shape[0], width - length)), mask], dim=1)
        elif length > width:
            _pad_left(self._cache, length - width)
            self._mask = torch.cat([self._mask.new_zeros((self._mask.shape[0], length - width)), self._mask], dim=1)
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self._mask = torch.cat([self._mask, mask], dim=0)
        self.rows.extend(rows)


def _pad_left(cache, n: int) -> None:
    import torch

    for layer in cache.layers:
        k, v = layer.keys, layer.values
        layer.keys = torch.cat([k.new_zeros(k.shape[:2] + (n,) + k.shape[3:]), k], dim=2)
        layer.values = torch.cat([v.new_zeros(v.shape[:2] + (n,) + v.shape[3:]), v], dim=2)


def _groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of prompts to prefill together: similar lengths (padding at most a quarter of a group's
    tokens) and at most :data:`PREFILL_TOKENS` padded tokens per group; shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group is not None:
            width = lengths[i]  # the longest so far (sorted)
            padded = width * (len(group) + 1)
            real = sum(lengths[j] for j in group) + lengths[i]
            if padded <= PREFILL_TOKENS and real * 4 >= padded * 3:
                group.append(i)
                continue
        groups.append([i])
    return groups


def _device(module):
    return next(module.parameters()).device


def _sampling(cfg, prompt_length: int):
    """transformers' own logits processors for a row's settings (with OpenAI's logit rules where
    ``model.generate`` puts them: after the repetition penalty, before the warpers), and its random generator."""
    import torch
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    rules = logit_rules(cfg, prompt_length)
    if rules is not None:
        processors.append(rules)
    generator = None
    if not is_greedy(cfg):
        processors.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k:
            processors.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            processors.append(TopPLogitsWarper(cfg.top_p))
        generator = torch.Generator()
        if cfg.seed is not None:
            generator.manual_seed(cfg.seed % (2**63))
        else:
            generator.seed()
    return (processors or None), generator
