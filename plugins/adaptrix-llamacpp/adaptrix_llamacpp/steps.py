"""Step-level decoding on llama.cpp: a server's requests as parallel sequences of one context.

:class:`LlamaStepDecoder` is an :class:`adaptrix.generation.steps.StepDecoder`
(``add``, ``step``, ``remove``, ``tail``, ``finish``; rows are
:class:`adaptrix.generation.steps.Row`), so ``adaptrix serve`` schedules it the same way:

- each row is a sequence of the runtime's context (ids ``1 .. max_rows``; 0 is
  the single-sequence path's), each with the whole context in its own KV
  stream, laid out as if alone: its attention is computed exactly as alone
  (one token per stream), and a row alone in its adapter group gets
  bit-identical logits, hence exactly the answer ``generate`` gives it alone
  (rows that share a group: see "Batch invariance" below);
- a newcomer's prompt is prefilled in its own decode call(s) on its sequence;
- :meth:`~LlamaStepDecoder.step` decodes one token per row: one
  ``llama_decode`` per adapter group, since LoRA adapters are set per context,
  not per sequence (a switch costs about 0.01 ms); each row samples from its
  own chain, built as the single-sequence path builds it;
- a removed row's KV cells are freed at once.

Batch invariance. llama.cpp multiplies a one-token batch by a float32 tensor
with ``ggml_vec_dot_f32`` and a batch of two or more with llamafile's sgemm
(``llamafile_sgemm`` declines ``n < 2``), which sum in another order: the
rows of a LoRA's ``lora_a``/``lora_b`` products differ in their last bits
(measured on every step; the first tensor that differs is layer 0's
``attn_q`` ``lora_a`` product). Quantized base weights quantize their
input again and usually absorb that, but not always: a greedy answer with an
adapter may then change when another row of the same adapter decodes beside
it (the base model's rows are bit-identical on the embedded Q4_1 model, whose
quantized kernels have no such split). ``batch_invariant=True`` decodes every
row in a ``llama_decode`` of its own, exactly as ``generate`` decodes it
alone, so each greedy answer is the request's answer alone whatever runs
beside it; it costs the throughput of grouping rows of one adapter
(``bench/bench_batch_invariance.py``).

The context is resized once for ``max_rows + 1`` sequences (its KV cache grows
that many times). :meth:`~LlamaStepDecoder.add` raises
:class:`~adaptrix.errors.BatchFullError` while every sequence is taken (the
scheduler queues the request until a row finishes).

The decoder holds the engine's model lease (given by the engine through
``LlamaCppRunner.step_decoder``) while it touches the context. It
leaves the last group's LoRAs set after a step (a change costs llama.cpp a
graph rebuild); ``generate`` and ``stream`` set the engine's own active
adapters before they run (``LlamaCppRunner._row``), so they keep working
between steps. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from adaptrix.errors import BatchFullError, GenerationError
from adaptrix.generation.result import GenerationResult, PreparedRequest
from adaptrix.generation.steps import Row, add_each, row_result, row_tail

from .runtime import MAX_SEQUENCES
from .sampling import sampling


@attrs.define(eq=False)
class LlamaRow(Row):
    """A :class:`~adaptrix.generation.steps.Row` decoded on its own sequence."""

    seq: int = attrs.field(kw_only=True)
    name: str | None = None  # the loaded adapter's name
    chain: Any = None
    pin: Any = None
    #: The row's grammar matcher (:class:`adaptrix.generation.matcher.RowMatcher`); ``None``: a free row.
    matcher: Any = None


class LlamaStepDecoder:
    """Decode up to ``max_rows`` rows together, one token per row per :meth:`step`."""

    def __init__(self, runner, *, lease, max_rows: int = 8, batch_invariant: bool = False):
        """``lease``: the engine's model lease (the ``lock`` of the runner's adapter manager)."""
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise GenerationError(f"max_rows must be a positive whole number, got {max_rows!r}")
        #: Each row decoded in a ``llama_decode`` of its own (see the module docstring).
        self.batch_invariant = bool(batch_invariant)
        self.runner = runner
        self.runtime = runner.runtime
        self.manager = runner.manager
        self.tokenizer = runner.loaded.tokenizer
        self.max_rows = min(max_rows, self.runtime.n_batch, MAX_SEQUENCES - 1)  # sequence 0 is generate's
        self.rows: list[LlamaRow] = []
        self._lock = lease
        with self._lock:
            if self.runtime.n_seq_max < self.max_rows + 1:
                self.runtime.set_max_sequences(self.max_rows + 1)
            self._free = list(range(1, self.max_rows + 1))
            for seq in self._free:  # a previous decoder's rows may have been dropped without remove()
                self.runtime.forget_sequence(seq)

    # -- rows -------------------------------------------------------------------
    def add(self, key: Any, prepared: PreparedRequest, adapter: str | None) -> tuple[LlamaRow, str]:
        """Prefill a new row on its own sequence and pick its first token.

        Returns the row and the text its first token releases (may be empty).
        Raises :class:`BatchFullError` when every sequence is taken.
        """
        runtime = self.runtime
        ids = list(prepared.input_ids)
        if not self._free:
            raise BatchFullError(
                f"all {self.max_rows} sequences of the llama.cpp step decoder are running; retry when a row "
                "finishes (or make the decoder with a larger max_rows)"
            )
        row = LlamaRow.open(key, prepared, adapter, self.tokenizer, seq=self._free[0])
        with self._lock:
            pins = contextlib.ExitStack()
            try:
                if adapter is not None:
                    row.name = self.manager.rows([adapter], 1)[0]  # resident (loaded when needed)
                    pins.enter_context(self.manager.pinned([row.name]))
                row.chain = runtime.sampler(ids, **sampling(prepared.settings))
                row.matcher = self.runner.grammar_matcher(prepared.grammar)
                runtime.forget_sequence(row.seq)
                self._use(self._scales(row.name))
                for start in range(0, len(ids), runtime.n_batch):
                    chunk = ids[start : start + runtime.n_batch]
                    last = start + len(chunk) == len(ids)
                    runtime.decode_sequences(chunk, range(start, start + len(chunk)), [row.seq] * len(chunk),
                                             [last and i == len(chunk) - 1 for i in range(len(chunk))])
                logits = self._raw(row, len(chunk) - 1)
                token = row.chain.sample(len(chunk) - 1, row.matcher)
            except BaseException:
                pins.close()
                runtime.forget_sequence(row.seq)
                if row.chain is not None:
                    row.chain.close()
                raise
        row.pin = pins
        self._free.pop(0)
        row.position = len(ids)
        self.rows.append(row)
        return row, self._accept(row, token, logits)

    def add_many(self, items) -> list:
        """:meth:`add` for each ``(key, prepared, adapter)``: ``(row, text)`` or the exception it raised.

        Each prompt is prefilled on its own sequence in turn (a sequence's LoRAs
        are the context's, so prompts for different adapters cannot share a decode).
        """
        return add_each(self, items)

    def remove(self, row: LlamaRow) -> None:
        """Take a row out (finished or cancelled) and free its sequence's KV cells."""
        self.rows.remove(row)
        with self._lock:
            if not self.runtime.closed:
                self.runtime.forget_sequence(row.seq)
        row.chain.close()
        row.pin.close()
        self._free.append(row.seq)

    # -- decoding -----------------------------------------------------------------
    def step(self) -> list[tuple[LlamaRow, str]]:
        """One token for every unfinished row; returns ``(row, text released)`` per row.

        Rows that finish get ``finish_reason`` set; the caller removes them.
        """
        rows = [r for r in self.rows if r.finish_reason is None]
        if not rows:
            return []
        assert len(rows) == len(self.rows), "remove finished rows before the next step"
        groups: dict[str | None, list[LlamaRow]] = {}  # one llama_decode per group (per row when batch-invariant)
        for row in rows:
            groups.setdefault(row.name, []).append(row)
        picked: dict[int, int] = {}
        scales = {name: self._scales(name) for name in groups}
        current = self.runtime.active_loras
        # the group whose LoRAs are set already goes first: a change of LoRAs costs llama.cpp a graph
        # rebuild at the next decode (measured: 35% of a one-row step when set and restored every step)
        with self._lock:
            for name in sorted(groups, key=lambda name: scales[name] != current):
                self._use(scales[name])
                members = groups[name]
                for batch in ([[row] for row in members] if self.batch_invariant else [members]):
                    self.runtime.decode_sequences(
                        [r.generated[-1] for r in batch], [r.position for r in batch],
                        [r.seq for r in batch], [True] * len(batch),
                    )
                    for i, row in enumerate(batch):
                        logits = self._raw(row, i)  # before the grammar masks them in place
                        picked[id(row)] = (row.chain.sample(i, row.matcher), logits)
        events = []
        for row in rows:
            row.position += 1
            events.append((row, self._accept(row, *picked[id(row)])))
        return events

    def finish(self, row: LlamaRow) -> GenerationResult:
        """The result ``generate`` would return for this row's tokens."""
        return row_result(row, self.tokenizer)

    def tail(self, row: LlamaRow) -> str:
        """Text still held back by the row's pipeline, released at its end."""
        return row_tail(row)

    def close(self) -> None:
        """Remove every row."""
        for row in list(self.rows):
            self.remove(row)

    # -- internals ------------------------------------------------------------------
    def _scales(self, name: str | None) -> tuple:
        """The runtime's ``(LoraAdapter, scale)`` pairs of adapter ``name`` (None: none)."""
        return tuple(self.manager.lora_scales(() if name is None else (name,)))

    def _use(self, scales: tuple) -> None:
        """The context decodes with these LoRAs from now on. They stay set after the step: a generation
        outside the decoder sets the engine's own active adapters first (``LlamaCppRunner._row``)."""
        self.runtime.set_loras(scales)

    def _raw(self, row: LlamaRow, index: int):
        """The raw logits of the last decode's ``index``-th token, copied, for a row that asks for logprobs."""
        return self.runtime.logits_at(index) if row.wants_logprobs else None

    def _accept(self, row: LlamaRow, token: int, logits=None) -> str:
        """Take the row's next token (picked from ``logits``, for its logprob); it ends by
        :func:`adaptrix.generation.steps.row_finish`, or at the context's end."""
        text = row.accept(token, logits)
        if row.finish_reason is None and row.position + 1 >= self.runtime.n_ctx:  # as generate_tokens ends
            row.finish_reason = "length"
        return text
