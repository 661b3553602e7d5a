"""Check an adapter against a model before any weight is loaded.

Everything here works from :class:`~.info.AdapterInfo` (config + safetensors
header) and a :class:`ModuleIndex` (names and shapes of the model's layers,
which can come from a model built on the meta device). Each message names the
adapter, the module or tensor, and both values.

One check reads tensor data: every floating-point tensor must be finite (an
adapter from a diverged training run holds NaN or Inf, and would be served
as empty answers). :func:`nonfinite_tensors` maps the safetensors file
(``numpy.memmap``, no copy) and runs ``numpy.isfinite`` once over each run
of adjacent float32/float16/float64 tensors (a safetensors file stores them
back to back), or tests the exponent bits of bfloat16 and float8 ones; only a
run that holds a non-finite value is looked at tensor by tensor, to name
them. See bench/bench_validate.py for what it costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import attrs

from adaptrix.adapters.info import AdapterInfo, TensorSpec, load_pickle_state, read_adapter_info
from adaptrix.adapters.matching import matches, split_key, targeted_modules
from adaptrix.adapters.sources import resolve_adapter
from adaptrix.adapters.targets import linear_features
from adaptrix.errors import AdapterFormatError, AdapterIncompatibleError, AdapterPickleError
from adaptrix.models.source import ModelSource, resolve_source

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.types import Hooks

SUPPORTED_PEFT_TYPES = ("LORA",)


@attrs.frozen
class CompatibilityReport:
    """The answer of ``validate_adapter``: ``ok`` is ``not errors``."""

    adapter: str
    model: str | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "model": self.model,
            "ok": self.ok,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        if self.ok:
            return "compatible" + (f" ({len(self.warnings)} warning(s))" if self.warnings else "")
        return f"incompatible: {len(self.errors)} error(s)"

    def message(self) -> str:
        lines = [f"adapter {self.adapter!r} is not compatible with {self.model or 'the model'}:"]
        lines += [f"  - {e}" for e in self.errors]
        lines += [f"  (warning) {w}" for w in self.warnings]
        return "\n".join(lines)


@attrs.frozen
class ModuleSpec:
    """One adaptable layer: kind ``linear``, ``embedding`` or ``other``, and its shapes."""

    name: str
    kind: str
    in_features: int | None
    out_features: int | None
    params: dict[str, tuple[int, ...]] = attrs.field(factory=dict)


@attrs.frozen
class ModuleIndex:
    """Names and shapes of a model's modules, as validation needs them."""

    modules: dict[str, ModuleSpec]
    linear_leaves: tuple[str, ...]
    vocab_size: int | None
    output_name: str | None

    @classmethod
    def from_model(cls, model) -> "ModuleIndex":
        """Index a transformers model, a PeftModel around one, or one built on the meta device."""
        import torch


        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
            from peft.utils.other import AuxiliaryTrainingWrapper
        except Exception:  # pragma: no cover - peft is a dependency
            BaseTunerLayer = AuxiliaryTrainingWrapper = ()  # type: ignore
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        modules: dict[str, ModuleSpec] = {}
        wrapped_prefixes: list[str] = []
        output_name = None
        for name, module in base.named_modules():
            if not name or any(name.startswith(p) for p in wrapped_prefixes):
                continue
            if BaseTunerLayer and isinstance(module, BaseTunerLayer):
                wrapped_prefixes.append(name + ".")
                module = module.get_base_layer()
            elif AuxiliaryTrainingWrapper and isinstance(module, AuxiliaryTrainingWrapper):
                wrapped_prefixes.append(name + ".")
                module = getattr(module, "original_module", module)
            features = linear_features(module)
            if features is not None:
                spec = ModuleSpec(name, "linear", *features)
            elif isinstance(module, torch.nn.Embedding):
                spec = ModuleSpec(name, "embedding", module.num_embeddings, module.embedding_dim)
            else:
                spec = ModuleSpec(name, "other", None, None)
            direct = {k: tuple(v.shape) for k, v in module.named_parameters(recurse=False)}
            modules[name] = attrs.evolve(spec, params=direct)
            if head is not None and module is head:
                output_name = name
        leaves = sorted({n.rsplit(".", 1)[-1] for n, s in modules.items() if s.kind == "linear" and n != output_name})
        vocab = getattr(getattr(base, "config", None), "vocab_size", None)
        if vocab is None and output_name:
            vocab = modules[output_name].out_features
        return cls(modules=modules, linear_leaves=tuple(leaves), vocab_size=vocab, output_name=output_name)

    def adaptable(self) -> list[str]:
        """Leaf names LoRA can target (Linear and Embedding layers)."""
        return sorted({n.rsplit(".", 1)[-1] for n, s in self.modules.items() if s.kind in ("linear", "embedding")})


def _short(names: Iterable[str], n: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _unsupported(cfg: dict) -> list[str]:
    problems = []
    peft_type = cfg.get("peft_type")
    if peft_type not in SUPPORTED_PEFT_TYPES:
        problems.append(
            f"peft_type is {peft_type!r}; adaptrix loads {', '.join(SUPPORTED_PEFT_TYPES)} adapters only "
            "(prompt tuning, IA3, LoKr, ... are not served)"
        )
        return problems
    refused = {
        "use_dora": "DoRA adapters are refused: neither fast switching nor mixed batches can serve them; "
        "merge the DoRA adapter into its base with peft (merge_and_unload) and load that model",
        "target_parameters": "LoRA on raw parameters (target_parameters, used for fused MoE experts) is not "
        "supported; target Linear modules instead",
        "layer_replication": "layer_replication changes the base model's layer stack and is not supported",
        "use_qalora": "QA-LoRA (use_qalora) needs a GPTQ-quantised base and is not supported",
        "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
        "lora_bias": "LoRA with a bias on lora_B (lora_bias) is not supported by mixed-adapter batches",
        "trainable_token_indices": "trainable_token_indices (partial embedding training) is not supported",
    }
    for key, why in refused.items():
        if cfg.get(key):
            problems.append(f"option {key}={cfg[key]!r}: {why}")
    if cfg.get("bias", "none") not in ("none", None):
        problems.append(
            f"option bias={cfg['bias']!r}: the adapter overwrites the base model's biases, so the base model "
            "could not be restored on unload; only bias='none' adapters are supported"
        )
    return problems


def _same_checkpoint(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True
    norm = lambda s: str(s).rstrip("/").rsplit("/", 1)[-1].lower()  # noqa: E731
    return str(a).rstrip("/") == str(b).rstrip("/") or norm(a) == norm(b)


def validate(
    info: AdapterInfo,
    index: ModuleIndex,
    *,
    model_family: str | None = None,
    model_id: str | None = None,
    allow_pickle: bool = False,
    tensors: Iterable[TensorSpec] | None = None,
    state: dict | None = None,
) -> CompatibilityReport:
    """Check ``info`` against the model described by ``index``; nothing is loaded.

    ``tensors`` overrides the header's tensor list, and ``state`` gives the
    tensors themselves (for a pickle loaded with ``weights_only=True`` after
    the user allowed it). The weights' values are read only to check that
    they are finite (see :func:`nonfinite_tensors`).
    """
    name, errors, warnings = info.name, [], []
    cfg = info.config
    who = f"adapter {name!r}"
    for problem in _unsupported(cfg):
        errors.append(f"{who}: {problem}")
    # -- base model family -------------------------------------------------
    if info.base_family and model_family and info.base_family != model_family:
        errors.append(
            f"{who} was trained for {info.base_model!r} (family {info.base_family!r}) but the loaded model "
            f"{model_id!r} is family {model_family!r}; LoRA weights do not carry across architectures: load a "
            f"{info.base_family} model or an adapter trained for this one"
        )
    elif info.base_family is None and info.base_model and model_family:
        warnings.append(
            f"{who}: cannot tell the family of its base model {info.base_model!r}; only module names and "
            "shapes were checked"
        )
    elif info.base_family and not _same_checkpoint(info.base_model, model_id):
        warnings.append(
            f"{who} was trained on {info.base_model!r}, the loaded model is {model_id!r} (both family "
            f"{model_family!r}); the shapes fit, but outputs may differ from what the adapter was tuned for"
        )
    # -- weights file ------------------------------------------------------
    if info.weights_format is None:
        errors.append(
            f"{who}: {info.path} has no adapter_model.safetensors (tensors absent: config only); "
            "nothing to load"
        )
    elif info.weights_format == "pickle" and not allow_pickle:
        errors.append(
            f"{who}: {info.weights_file} is a pickle (adapter_model.bin), which can run code when loaded; "
            "convert it to adapter_model.safetensors, or pass allow_pickle=True if you trust its source "
            "(it is then read with torch.load(weights_only=True))"
        )
    # -- target modules exist ----------------------------------------------
    targets = cfg.get("target_modules")
    if targets:
        if isinstance(targets, str):
            if targets.lower() != "all-linear" and not targeted_modules(index, cfg):
                errors.append(
                    f"{who}: target_modules pattern {targets!r} matches no Linear or Embedding layer of "
                    f"{model_id or 'the model'}; the model has: {', '.join(index.adaptable())}"
                )
        else:
            missing = [t for t in targets if not any(matches(n, [t]) for n in index.modules)]
            if missing:
                errors.append(
                    f"{who}: target modules {sorted(missing)} do not exist in {model_id or 'the model'}; "
                    f"its adaptable layers are: {', '.join(index.adaptable())}"
                )
    # -- tensors vs modules ------------------------------------------------
    specs = list(tensors) if tensors is not None else list(info.tensors)
    if specs:
        _check_tensors(who, info, index, specs, errors, warnings, model_id)
    # -- values: finite ----------------------------------------------------
    bad = nonfinite_tensors(info, state)
    if bad:
        listed = ", ".join(f"{n} ({k} of {total})" for n, k, total in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        errors.append(
            f"{who}: {info.weights_file} holds non-finite values (NaN or Inf) in {len(bad)} tensor(s): "
            f"{listed}{more}; loaded, it would make every answer empty or garbage. The training run that made "
            "it diverged: retrain it (a lower learning rate) or restore a good copy"
        )
    return CompatibilityReport(adapter=name, model=model_id, errors=tuple(errors), warnings=tuple(warnings))


def validate_with_state(info: AdapterInfo, index: ModuleIndex, *, model_family: str | None, model_id: str | None,
                        allow_pickle: bool) -> tuple[CompatibilityReport, dict | None]:
    """``(report, state)``: :func:`validate` for an adapter as read from its folder; ``state`` is an allowed
    pickle's tensors (read here, checked, and what loading it then uses), else ``None``."""
    state = None
    tensors = None
    if info.weights_format == "pickle" and allow_pickle:
        state = load_pickle_state(Path(info.weights_file), info.name)
        tensors = [TensorSpec(k, str(v.dtype), tuple(v.shape)) for k, v in state.items()]
    report = validate(info, index, model_family=model_family, model_id=model_id, allow_pickle=allow_pickle,
                      tensors=tensors, state=state)
    return report, state


def require_valid(report: CompatibilityReport, info: AdapterInfo, allow_pickle: bool) -> None:
    """Raise for a failed ``report``: :class:`AdapterPickleError` for a pickle not allowed,
    :class:`AdapterIncompatibleError` (with the report) for any other error."""
    if not report.ok:
        error = AdapterPickleError if info.weights_format == "pickle" and not allow_pickle else \
            AdapterIncompatibleError
        raise error(report.message(), report)


#: safetensors float dtypes numpy computes with: ``isfinite`` on a little-endian view.
_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
#: Other float dtypes: ``(unsigned view, exponent mask, value that is non-finite)``; NaN/Inf have every exponent
#: bit set (float8 E4M3 "fn" has no Inf; its NaN is every bit but the sign set).
_BITS = {"BF16": ("<u2", 0x7F80, 0x7F80), "F8_E5M2": ("u1", 0x7C, 0x7C), "F8_E4M3": ("u1", 0x7F, 0x7F)}


def nonfinite_tensors(info: AdapterInfo, state: dict | None = None) -> list[tuple[str, int, int]]:
    """``[(tensor, non-finite values, values), ...]`` of an adapter's floating-point weights; ``[]`` when all finite.

    Reads ``info``'s safetensors file through a memory map (no copy), one ``isfinite`` pass over each run of
    adjacent tensors of one dtype (in blocks of :data:`_BLOCK` values), and names the tensors only when a run
    holds a non-finite value; or checks the tensors of ``state`` (an allowed pickle, already loaded). An
    unreadable file is left to the loader's own error.
    """
    if state is not None:
        return _nonfinite_state(state)
    if info.weights_format != "safetensors" or not info.weights_file:
        return []
    import numpy as np

    specs = sorted((t for t in info.tensors if t.offsets is not None and (t.dtype in _FLOATS or t.dtype in _BITS)),
                   key=lambda t: t.offsets)
    if not specs:
        return []
    try:
        data = np.memmap(info.weights_file, dtype=np.uint8, mode="r")
    except (OSError, ValueError):
        return []
    runs: list[list] = []
    for t in specs:
        if runs and runs[-1][0].dtype == t.dtype and runs[-1][-1].offsets[1] == t.offsets[0]:
            runs[-1].append(t)
        else:
            runs.append([t])
    bad: list[tuple[str, int, int]] = []
    for run in runs:
        span = data[run[0].offsets[0]:run[-1].offsets[1]]
        if _count_nonfinite(span, run[0].dtype, stop_at_first=True):
            for t in run:
                raw = data[t.offsets[0]:t.offsets[1]]
                count = _count_nonfinite(raw, t.dtype)
                if count:
                    bad.append((t.name, count, raw.size // _WIDTH[t.dtype]))
    return bad


#: Values checked per ``isfinite`` call: bounds the temporary boolean array (16 MB).
_BLOCK = 1 << 24
_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E5M2": 1, "F8_E4M3": 1}


def _count_nonfinite(raw, dtype: str, stop_at_first: bool = False) -> int:
    import numpy as np

    if dtype in _FLOATS:
        values = raw.view(_FLOATS[dtype])
        test = np.isfinite
    else:
        view, mask, special = _BITS[dtype]
        values = raw.view(view)
        test = lambda block: (block & mask) != special  # noqa: E731
    count = 0
    for i in range(0, values.size, _BLOCK):
        ok = test(values[i:i + _BLOCK])
        if not ok.all():
            count += int(ok.size - np.count_nonzero(ok))
            if stop_at_first:
                return count
    return count


def _nonfinite_state(state: dict) -> list[tuple[str, int, int]]:
    bad = []
    for name, value in state.items():
        if getattr(value, "is_floating_point", lambda: False)():
            import torch

            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad.append((name, int((~finite).sum()), value.numel()))
    return bad


def _check_tensors(who, info, index, specs, errors, warnings, model_id) -> None:
    cfg = info.config
    save = set(cfg.get("modules_to_save") or ())
    targeted = set(targeted_modules(index, cfg))
    unknown, untargeted, effective = [], [], set()
    ranks: dict[str, dict[str, int]] = {}
    vocab = index.vocab_size
    for t in specs:
        module, param = split_key(t.name)
        spec = index.modules.get(module)
        if spec is None:
            unknown.append(t.name)
            continue
        if param in ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B"):
            if module not in targeted:
                untargeted.append(t.name)
                continue
            if len(t.shape) != 2:
                errors.append(f"{who}: tensor {t.name} has shape {list(t.shape)}, expected a 2-D matrix")
                continue
            if param == "lora_A.weight":
                ranks.setdefault(module, {})["A"] = t.shape[0]
                if spec.in_features is not None and t.shape[1] != spec.in_features:
                    errors.append(
                        f"{who}: tensor {t.name} (lora_A) takes {t.shape[1]} input features but module "
                        f"{module} has in_features={spec.in_features}; the adapter was trained for a model "
                        "with a different hidden size"
                    )
                    continue
            elif param == "lora_B.weight":
                ranks.setdefault(module, {})["B"] = t.shape[1]
                if spec.out_features is not None and t.shape[0] != spec.out_features:
                    errors.append(
                        f"{who}: tensor {t.name} (lora_B) produces {t.shape[0]} output features but module "
                        f"{module} has out_features={spec.out_features}; the adapter was trained for a model "
                        "with different layer sizes"
                    )
                    continue
            elif param == "lora_embedding_A":
                ranks.setdefault(module, {})["A"] = t.shape[0]
                if spec.in_features is not None and t.shape[1] != spec.in_features:
                    errors.append(
                        f"{who}: tensor {t.name} covers a vocabulary of {t.shape[1]} tokens but embedding "
                        f"{module} has {spec.in_features} (model vocab_size {vocab}); use the tokenizer and "
                        "base the adapter was trained with, or resize the embeddings first"
                    )
                    continue
            else:
                ranks.setdefault(module, {})["B"] = t.shape[1]
                if spec.out_features is not None and t.shape[0] != spec.out_features:
                    errors.append(
                        f"{who}: tensor {t.name} has embedding dim {t.shape[0]} but embedding {module} has "
                        f"{spec.out_features}"
                    )
                    continue
            effective.add(module)
            continue
        # a full weight: modules_to_save, or an embedding saved alongside (save_embedding_layers)
        leaf = param.split(".")[-1]
        if param.startswith("base_layer."):
            expected = spec.params.get(leaf)
        elif any(matches(module, [m]) for m in save):
            expected = spec.params.get(param)
        else:
            untargeted.append(t.name)
            continue
        if expected is None:
            unknown.append(t.name)
        elif tuple(t.shape) != tuple(expected):
            vocab_note = ""
            if spec.kind == "embedding" or module == index.output_name:
                vocab_note = f" (model vocab_size {vocab}); the adapter was saved for a different vocabulary"
            errors.append(
                f"{who}: tensor {t.name} has shape {list(t.shape)} but {module}.{leaf} in the model has "
                f"shape {list(expected)}{vocab_note}"
            )
        else:
            effective.add(module)
    for module, r in sorted(ranks.items()):
        if "A" in r and "B" in r and r["A"] != r["B"]:
            errors.append(f"{who}: module {module}: lora_A has rank {r['A']} but lora_B has rank {r['B']}")
    if unknown:
        errors.append(
            f"{who}: {len(unknown)} tensor(s) belong to modules {model_id or 'the model'} does not have "
            f"({_short(unknown)}); the adapter was made for a different architecture or layer count"
        )
    if untargeted:
        warnings.append(
            f"{who}: {len(untargeted)} tensor(s) are not covered by target_modules/modules_to_save and would be "
            f"ignored ({_short(untargeted)})"
        )
    lora_targets = {m for m in targeted}
    missing = sorted(lora_targets - effective)
    if not effective and not errors:
        errors.append(
            f"{who}: none of its {len(specs)} tensor(s) would reach a module of {model_id or 'the model'} "
            f"(targets {info.targets_text}); loaded, it would do nothing"
        )
    elif missing and effective:
        warnings.append(
            f"{who}: {len(missing)} targeted module(s) have no LoRA weights in the file and would stay at "
            f"their initial value ({_short(missing)})"
        )


def index_for_model(model, *, host: "Hooks", trust_remote_code: bool = False) -> tuple[ModuleIndex, str]:
    """``(ModuleIndex, family)`` for a model id, folder, ``.gguf`` or resolved ``ModelSource``.

    Built on the meta device from the config alone (no weights read, no GGUF conversion).
    """
    import torch
    from transformers import AutoModelForCausalLM


    src = model if isinstance(model, ModelSource) else resolve_source(model, progress=False, host=host)
    hf_config = src.hf_config(trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        module = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    return ModuleIndex.from_model(module), src.family


def validate_for_model(
    name_or_path: str, model_id: str, *, host: "Hooks", adapters_dir=None, allow_pickle: bool = False, index=None
) -> CompatibilityReport:
    """Validate an adapter against a model that is not loaded (its config only; ``host``: the plugin host)."""
    name, folder = resolve_adapter(name_or_path, adapters_dir)
    if index is None:
        index = index_for_model(model_id, host=host)
    module_index, family = index
    try:
        info = read_adapter_info(folder, name, host=host)
    except AdapterFormatError as exc:
        return CompatibilityReport(adapter=name, model=model_id, errors=(str(exc),))
    tensors = state = None
    if info.weights_format == "pickle" and allow_pickle:
        state = load_pickle_state(Path(info.weights_file), name)
        tensors = [TensorSpec(k, str(v.dtype), tuple(v.shape)) for k, v in state.items()]
    return validate(info, module_index, model_family=family, model_id=model_id, allow_pickle=allow_pickle,
                    tensors=tensors, state=state)
