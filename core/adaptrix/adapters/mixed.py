"""Mixed-adapter batches: row i of a batch goes through its own LoRA adapter.

While a mixed batch runs, each peft LoRA ``Linear`` wrapper that one of the
batch's adapters targets is swapped, in its parent module, for a
:class:`MixedLoRALinear`; wrappers no adapter of the batch targets are swapped
for their bare base layer. A ``MixedLoRALinear`` holds the batch's adapters
concatenated along the rank axis (``A``: ``(sum r, in)``; ``B``: ``(out, sum r)``
with each adapter's scaling folded in) and computes

    y = base(x) + ((x A^T) * mask) B^T

where ``mask[i, c]`` is 1 when column ``c`` of the rank axis belongs to row
``i``'s adapter. Two dense matmuls per layer read each adapter's weights once,
with no per-adapter Python loop, index copy or scatter (peft's
``adapter_names`` path does one of each per adapter and layer). The extra
multiply-adds (every row against every adapter's rank columns) are negligible
while ``sum r`` is small next to the layer's width, which holds for the
handful of adapters a batch mixes; :data:`MAX_COLUMNS` bounds it.

This module imports torch at the top: import it only when a mixed batch runs.
"""

from __future__ import annotations

import torch

#: Most rank columns (sum of the batch's adapter ranks in one layer) served by
#: the concatenated path; wider batches go through peft's per-adapter loop.
MAX_COLUMNS = 512


class MixedLoRALinear(torch.nn.Module):
    """``base(x)`` plus, for every row, its own adapter's LoRA delta."""

    def __init__(self, base: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, columns: torch.Tensor, batch):
        super().__init__()
        self.base = base
        self.a = a  # (C, in): the adapters' lora_A stacked on the rank axis
        self.b = b  # (out, C): their lora_B, scaled, side by side
        self.columns = columns  # (C,): the slot (1..n) of the adapter owning each rank column
        self.batch = batch  # the MixedBatch: each row's slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = torch.nn.functional.linear(x.to(self.a.dtype), self.a)
        h = h * self.batch.mask(self.columns, h)
        return out + torch.nn.functional.linear(h, self.b).to(out.dtype)


class MixedBatch:
    """The concatenated LoRA weights of a set of adapters, per layer, and each row's adapter slot.

    Built once per set of adapters (``layers``: peft LoRA Linear wrappers), reused across
    generate calls with other row orders through :meth:`set_rows`.
    """

    def __init__(self, slots, adapters: list[str]):
        self.adapters = adapters
        self._rows: torch.Tensor | None = None
        self._masks: dict = {}
        self.swaps = []  # (parent, attribute, replacement module)
        layouts: dict[tuple, torch.Tensor] = {}  # one column tensor per rank layout: masks are shared
        for parent, child, layer in slots:
            present = [(i + 1, n) for i, n in enumerate(adapters) if n in layer.lora_A]
            if not present:
                self.swaps.append((parent, child, layer.get_base_layer()))
                continue
            with torch.no_grad():
                a = torch.cat([layer.lora_A[n].weight for _, n in present]).contiguous()
                b = torch.cat([layer.lora_B[n].weight * layer.scaling[n] for _, n in present], dim=1).contiguous()
            layout = tuple((slot, layer.lora_A[n].weight.shape[0]) for slot, n in present)
            if layout not in layouts:
                layouts[layout] = torch.cat(
                    [torch.full((r,), slot, dtype=torch.long) for slot, r in layout]
                ).to(a.device)
            columns = layouts[layout]
            self.swaps.append((parent, child, MixedLoRALinear(layer.get_base_layer(), a, b, columns, self)))

    @staticmethod
    def fits(slots, adapters: list[str]) -> bool:
        """Every layer the adapters target is a plain LoRA Linear, and the rank axis stays narrow."""
        from peft.tuners.lora.layer import Linear

        for _, _, layer in slots:
            present = [n for n in adapters if n in layer.lora_A]
            if not present:
                continue
            if type(layer) is not Linear or any(n in layer.lora_variant or layer.lora_bias.get(n) for n in present):
                return False
            if sum(layer.r[n] for n in present) > MAX_COLUMNS:
                return False
        return True

    def set_rows(self, names: list[str], base: str) -> None:
        """Row i uses ``names[i]`` (``base``: no adapter)."""
        slot = {n: i + 1 for i, n in enumerate(self.adapters)}
        self._rows = torch.tensor([0 if n == base else slot[n] for n in names], dtype=torch.long)
        self._masks = {}

    def mask(self, columns: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``(rows, 1, C)`` (``(rows, C)`` for 2-D ``h``), ``h``'s dtype: 1 where column c is the row's adapter's."""
        key = (id(columns), h.shape[0], h.dim(), h.dtype)
        found = self._masks.get(key)
        if found is None:
            rows = self._rows
            if h.shape[0] != len(rows):  # generate expands each row (beams, num_return_sequences)
                if h.shape[0] % len(rows):
                    raise RuntimeError(f"mixed-adapter batch of {len(rows)} rows got an input of {h.shape[0]} rows")
                rows = rows.repeat_interleave(h.shape[0] // len(rows))
            found = (rows.to(columns.device)[:, None] == columns[None, :]).to(h.dtype)
            if h.dim() == 3:
                found = found[:, None, :]
            self._masks[key] = found
        return found
