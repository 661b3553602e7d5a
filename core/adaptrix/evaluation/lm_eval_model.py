"""lm-evaluation-harness's model ``adaptrix``: any model, adapter and backend adaptrix loads, evaluated by lm-eval.

Importing this module registers the model with lm-eval (0.4.x has no plugin entry point), so::

    import lm_eval
    import adaptrix.evaluation.lm_eval_model  # noqa: F401  (registers --model adaptrix)

    lm_eval.simple_evaluate(model="adaptrix", model_args="adapter=math_specialist,backend=transformers",
                            tasks=["arc_easy"])

or ``adaptrix lm-eval --model adaptrix --model_args ... --tasks ...`` from the command line (the same
arguments as ``lm_eval``). ``model_args``: ``model`` (any source adaptrix loads; default the embedded
SmolLM2), ``adapter`` (a name in ``adapters_dir``, or ``a:0.7+b:0.3`` for a weighted composition; default the
base model), ``adapters_dir``, ``backend``, ``dtype``, ``device``, ``max_length`` (tokens per scored row,
default 2048 as lm-eval's API models), ``max_gen_toks`` (default 256). ``AdaptrixLM(engine=...)`` wraps an
engine already loaded.

``loglikelihood`` goes through :meth:`adaptrix.Engine.score_batch` (lm-eval's own context/continuation
split, batched), ``loglikelihood_rolling`` through lm-eval's rolling windows, ``generate_until`` through
:meth:`adaptrix.Engine.generate_batch_detailed` on lm-eval's token ids (a raw prompt, the text exactly as
generated). The same requests sent to ``adaptrix serve`` by lm-eval's ``local-completions`` (token ids,
``tokenizer_backend=remote``) give the same scores.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from adaptrix.adapters.compositions import check_composition_weights
from adaptrix.engine import Engine
from adaptrix.errors import AdaptrixError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - the eval extra is not installed
    raise AdaptrixError("lm-eval is not installed; install it with: pip install 'adaptrix[eval]'") from exc

log = logging.getLogger("adaptrix.evaluation")

#: The defaults of lm-eval's API models (``local-completions``), so both ways score the same rows.
MAX_LENGTH = 2048
MAX_GEN_TOKS = 256
SEED = 1234


def parse_adapter(value: Any) -> str | dict[str, float] | None:
    """``model_args``' ``adapter``: empty or ``base`` -> None, ``a:0.7+b:0.3`` -> a composition, else a name."""
    if value is None or value in ("", "base", "none", "None"):
        return None
    text = str(value)
    if ":" not in text:
        return text
    weights: dict[str, float] = {}
    for part in text.split("+"):
        name, _, weight = part.partition(":")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            raise AdaptrixError(f"adapter={text!r}: {part!r} is not NAME:WEIGHT (e.g. "
                                "adapter=math_specialist:0.7+pirate_style:0.3)") from None
    return weights


def _batch_size(value: Any) -> int:
    if value in (None, "", "auto") or (isinstance(value, str) and value.startswith("auto")):
        return 16
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise AdaptrixError(f"batch_size={value!r} is not a whole number (or auto)") from None
    if size < 1:
        raise AdaptrixError(f"batch_size must be at least 1, got {size}")
    return size


def _device(asked: str | None) -> str:
    """lm-eval's ``--device`` (``cuda:0`` unless told otherwise, as for its own ``hf`` model): a CUDA device
    where there is none falls back to ``auto`` with a warning, as lm-eval's ``hf`` model does."""
    if not asked:
        return "auto"
    if asked.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            log.warning("device %r asked for, but no CUDA GPU is visible: using device='auto'", asked)
            return "auto"
    return asked


@register_model("adaptrix")
class AdaptrixLM(TemplateLM):
    """An adaptrix :class:`~adaptrix.Engine` (one model, one adapter or composition) as an lm-eval model."""
    def __init__(self, model: str | None = None, adapter: str | None = None, adapters_dir: str = "adapters",
                 backend: str = "auto", dtype: str = "auto", device: str | None = None,
                 batch_size: Any = 16, max_batch_size: Any = None, max_length: int = MAX_LENGTH,
                 max_gen_toks: int = MAX_GEN_TOKS, engine: Any = None, **unused: Any):
        super().__init__()
        if unused:
            raise AdaptrixError(f"unknown model_args for --model adaptrix: {', '.join(sorted(unused))}; known: "
                                "model, adapter, adapters_dir, backend, dtype, device, max_length, max_gen_toks")
        if engine is None:

            engine = Engine(model or None, device=_device(device), dtype=dtype, adapters_dir=adapters_dir,
                            backend=backend, progress=False)
            engine.initialize()
        self.engine = engine
        self.adapter = parse_adapter(adapter)
        self._held = None
        if isinstance(self.adapter, dict):  # built once (cached by the engine), held while this model lives

            weights = check_composition_weights(self.adapter, "adapter")
            self._held = engine.adapters.hold(weights=list(weights.items()))
            self.adapter = self._held.name
        self.tokenizer = engine.tokenizer
        self.batch_size_per_gpu = _batch_size(batch_size)
        self.max_length = int(max_length)
        self.max_gen_toks = int(max_gen_toks)

    # -- tokens --------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def eot_token(self) -> str:
        return self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of ``string``, no special tokens added (as lm-eval's API models send them)."""
        return [int(i) for i in self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]]

    def tok_decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def tokenizer_name(self) -> str:
        return str(self.engine.get_model_info().get("model_id", "adaptrix")).replace("/", "__")

    # -- scores --------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``(logprob, is_greedy)`` per ``(key, context ids, continuation ids)``, left-truncated to
        ``max_length`` tokens as lm-eval's API models truncate, scored in batches of ``batch_size``."""
        from tqdm import tqdm

        items = []
        for _, ctx, cont in requests:
            whole = (list(ctx) + list(cont))[-self.max_length:]
            ctxlen = len(ctx) - max(0, len(ctx) + len(cont) - self.max_length)
            items.append((whole[:ctxlen], whole[ctxlen:]))
        out: list[tuple[float, bool]] = []
        step = self.batch_size_per_gpu
        with tqdm(total=len(items), disable=disable_tqdm, desc="adaptrix loglikelihood") as bar:
            for start in range(0, len(items), step):
                chunk = items[start:start + step]
                scores = self.engine.score_batch(chunk, adapters=[self.adapter] * len(chunk))
                for (key, _, _), score in zip(requests[start:start + step], scores):
                    answer = (score.logprob, score.greedy)
                    out.append(answer)
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                bar.update(len(chunk))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood from lm-eval's disjoint rolling windows (all texts' windows batched)."""
        from lm_eval import utils

        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for window in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - 1, context_len=1)):
                windows.append((None, *window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, seed 1234) text per ``(context, gen_kwargs)``, cut at ``until`` and EOS; requests
        with the same ``gen_kwargs`` are generated together in batches of ``batch_size``."""
        from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
        from tqdm import tqdm

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="adaptrix generate_until") as bar:
            for indices in groups.values():
                kwargs = dict(requests[indices[0]].args[1])
                kwargs.pop("do_sample", None)
                max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_tokens", self.max_gen_toks)))
                temperature = float(kwargs.pop("temperature", 0) or 0)
                until = handle_stop_sequences(kwargs.pop("until", None), self.eot_token)
                settings: dict[str, Any] = {"max_new_tokens": max_new, "temperature": temperature, "seed": SEED}
                if until:
                    settings["stop"] = until
                for name in ("top_p", "top_k", "repetition_penalty"):
                    if name in kwargs:
                        settings[name] = kwargs.pop(name)
                keep = max(1, self.max_length - max_new)
                for start in range(0, len(indices), self.batch_size_per_gpu):
                    chunk = indices[start:start + self.batch_size_per_gpu]
                    prompts = [self.tok_encode(requests[i].args[0])[-keep:] for i in chunk]
                    results = self.engine.generate_batch_detailed(
                        prompts, adapters=[self.adapter] * len(chunk), raw=True, trim=False, show_thinking=True,
                        **settings)
                    for i, result in zip(chunk, results):
                        text = postprocess_generated_text(result.text, until, None)
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(chunk))
        return out  # type: ignore[return-value]
