"""OpenAI's logit rules on the transformers backend: ``presence_penalty``, ``frequency_penalty``, ``logit_bias``.

:class:`OpenAILogitRules` is a logits processor (``processor(input_ids, scores) -> scores``) that both
transformers paths run at the same place: ``model.generate`` merges it after its own repetition penalty and
before temperature/top-k/top-p, and the step decoder (:mod:`.batching`) puts it there in its own list. Per
token ``t`` of the vocabulary::

    logit[t] += bias[t] - presence_penalty * (count[t] > 0) - frequency_penalty * count[t]

where ``count[t]`` counts ``t`` among the generated tokens only (OpenAI's definition: the prompt does not
count, unlike ``repetition_penalty``). Other backends compute the same rule with their own samplers.
"""

from __future__ import annotations

from typing import Any

from adaptrix.generation.settings import has_logit_rules
from adaptrix.types import GenerationConfig


class OpenAILogitRules:
    """The logit rules of one config for rows whose generated tokens start at column ``start`` of ``input_ids``."""

    def __init__(self, cfg: GenerationConfig, start: int):
        self.start = int(start)
        self.presence = float(cfg.presence_penalty or 0.0)
        self.frequency = float(cfg.frequency_penalty or 0.0)
        self.bias = tuple(cfg.logit_bias or ())
        self._bias_tensor: Any = None

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.clone()
        generated = input_ids[:, self.start:]
        if (self.presence or self.frequency) and generated.shape[1]:
            counts = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
            counts.scatter_add_(1, generated.to(scores.device), torch.ones(generated.shape, dtype=scores.dtype,
                                                                           device=scores.device))
            scores -= self.presence * (counts > 0).to(scores.dtype) + self.frequency * counts
        if self.bias:
            if self._bias_tensor is None or self._bias_tensor[0].device != scores.device:
                ids = torch.tensor([t for t, _ in self.bias], dtype=torch.long, device=scores.device)
                values = torch.tensor([b for _, b in self.bias], dtype=scores.dtype, device=scores.device)
                self._bias_tensor = (ids, values)
            ids, values = self._bias_tensor
            scores[:, ids] += values.to(scores.dtype)
        return scores


def logit_rules(cfg: GenerationConfig, start: int) -> OpenAILogitRules | None:
    """The processor for ``cfg`` (generated tokens from column ``start``), or ``None`` when it sets no rule."""
    return OpenAILogitRules(cfg, start) if has_logit_rules(cfg) else None
