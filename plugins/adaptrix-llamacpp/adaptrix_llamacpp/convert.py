"""PEFT LoRA folders <-> GGUF LoRA files (the format llama.cpp and Ollama load).

A GGUF LoRA holds, for every adapted weight ``blk.N.attn_q.weight`` of the base
GGUF, two tensors ``blk.N.attn_q.weight.lora_a`` (rank x in, as PEFT's
``lora_A``) and ``...lora_b`` (out x rank), plus ``adapter.lora.alpha``;
llama.cpp scales each pair by ``alpha / rank``. Where llama.cpp's model
converter permuted the base weight's rows (q/k of the ``llama`` architecture),
``lora_b`` gets the same row permutation, so ``B @ A`` lines up with the
permuted weight. Per-module scales PEFT has and llama.cpp lacks (rsLoRA,
``alpha_pattern``) are folded into ``lora_b``.

No torch: tensors are read and written with numpy (``safetensors.numpy``, ``gguf``).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from adaptrix.adapters.info import CONFIG_FILE, WEIGHTS_FILE, read_adapter_info
from adaptrix.plugins.host import get_host
from adaptrix.adapters.validate import CompatibilityReport, validate
from adaptrix.plugins.detection import detect_family
from adaptrix.errors import AdapterFormatError, AdapterIncompatibleError, ModelConfigError
from adaptrix.models.modelconfig import gguf_config
from adaptrix.storage.files import atomic_file

from .gguf_arch import SUPPORTED_ARCHITECTURES, arch_names, permute_rows, permuted_heads, unpermute_rows
from .gguf_index import GGUFModel, module_index, read_gguf_model

_PREFIX = "base_model.model."
_PAIR_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
#: metadata keys adaptrix adds to the GGUF LoRAs it writes (llama.cpp ignores them).
KEY_HEADS = "adaptrix.lora.head_count"
KEY_HEADS_KV = "adaptrix.lora.head_count_kv"
KEY_PEFT = "adaptrix.lora.peft_config"
#: peft_config keys carried through a round trip; the rest are rebuilt from the tensors.
_CARRIED = ("base_model_name_or_path", "task_type", "target_modules", "revision")
DTYPES = {"f32": np.float32, "f16": np.float16}


# -- PEFT -> GGUF --------------------------------------------------------------


def check_architecture(model: GGUFModel, what: str) -> None:
    """Refuse a GGUF architecture the converter does not support, naming it and what to do."""
    if model.arch not in SUPPORTED_ARCHITECTURES:
        raise AdapterIncompatibleError(
            f"{what}: the GGUF model {model.path} has architecture {model.arch!r}; the GGUF LoRA converter "
            f"supports {', '.join(SUPPORTED_ARCHITECTURES)}. Run this adapter on the transformers backend "
            "(backend='transformers'), or convert it with llama.cpp's convert_lora_to_gguf.py"
        )


def _refusals(info, cfg: dict[str, Any]) -> list[str]:
    """What a GGUF LoRA cannot express, found from the config and header before any tensor is read."""
    who = f"adapter {info.name!r}"
    out = []
    if cfg.get("modules_to_save"):
        out.append(
            f"{who}: modules_to_save={list(cfg['modules_to_save'])} replaces whole modules, which a GGUF LoRA "
            "cannot carry; run it on the transformers backend, or retrain without modules_to_save"
        )
    if cfg.get("use_dora"):
        out.append(
            f"{who}: use_dora=True (DoRA) has no GGUF LoRA form; merge it into the base with peft "
            "(merge_and_unload) and convert that model, or run it on the transformers backend"
        )
    embeds = sorted({t.name for t in info.tensors if "lora_embedding_" in t.name})
    if embeds:
        out.append(
            f"{who}: LoRA on embedding layers ({embeds[0]}{' ...' if len(embeds) > 1 else ''}) is not converted "
            "to GGUF; retrain without the embedding in target_modules, or run it on the transformers backend"
        )
    return out


def check_adapter(adapter_dir: str | os.PathLike, model: GGUFModel, *, name: str | None = None, host=None):
    """Validate an adapter folder against a GGUF model: ``(AdapterInfo, CompatibilityReport)``.

    ``host``: the plugin host that names the adapter's base family (default: the process's host, which
    loaded this plugin).

    Raises :class:`AdapterIncompatibleError` (with ``report``) on an unsupported
    architecture, a refused adapter feature, or any validation error, before any
    tensor is read.
    """
    info = read_adapter_info(Path(adapter_dir), name, host=host if host is not None else get_host())
    check_architecture(model, f"adapter {info.name!r}")
    refused = _refusals(info, info.config)
    report = validate(
        info, module_index(model), model_family=_family(model), model_id=str(model.path)
    )
    if refused:
        report = CompatibilityReport(report.adapter, report.model, tuple(refused) + report.errors, report.warnings)
    if not report.ok:
        raise AdapterIncompatibleError(report.message(), report)
    return info, report


def _family(model: GGUFModel) -> str | None:
    """The adaptrix family of a GGUF model, through the same detection as everywhere else."""
    try:
        return detect_family(str(model.path), gguf_config(model.path), source=str(model.path))[0]
    except ModelConfigError:
        return None


def _pattern_value(patterns: dict[str, Any], module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name or its dotted suffix."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _peft_scale(cfg: dict[str, Any], module: str, rank: int) -> float:
    alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8)))
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def _pairs(state: dict[str, np.ndarray], who: str) -> dict[str, dict[str, np.ndarray]]:
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        m = _PAIR_RE.match(key)
        if m is None:
            raise AdapterFormatError(f"{who}: tensor {key} is not a lora_A/lora_B weight; cannot convert it to GGUF")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    for module, p in pairs.items():
        if set(p) != {"A", "B"}:
            raise AdapterFormatError(f"{who}: module {module} has lora_{''.join(p)} but not both lora_A and lora_B")
    return pairs


def peft_to_gguf_lora(
    adapter_dir: str | os.PathLike,
    base_gguf: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    progress: bool = True,
    dtype: str = "f32",
    name: str | None = None,
    writing: dict[str, str] | None = None,
) -> Path:
    """Convert a PEFT LoRA folder into a GGUF LoRA for ``base_gguf``; returns ``out_path``.

    The adapter is validated against the GGUF's own tensor shapes first (the
    same report and errors as a transformers load); the file is written with
    :func:`adaptrix.storage.files.atomic_file` (``writing``: its ``doing=`` and
    ``remedy=`` wording), so a failure leaves ``out_path`` as it was and OS
    failures are :class:`~adaptrix.errors.StorageError`.
    """
    from safetensors.numpy import load_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    model = read_gguf_model(base_gguf)
    info, _report = check_adapter(adapter_dir, model, name=name)
    who = f"adapter {info.name!r}"
    if info.weights_format != "safetensors":
        raise AdapterFormatError(
            f"{who}: {info.path} holds {info.weights_file}; the GGUF converter reads adapter_model.safetensors "
            "only: re-save the adapter with save_pretrained(safe_serialization=True)"
        )
    cfg = info.config
    names = arch_names(model.arch, model.n_layers)
    pairs = _pairs(load_file(info.weights_file), who)
    alpha = float(cfg.get("lora_alpha", 8))
    if alpha == 0:
        raise AdapterIncompatibleError(f"{who}: lora_alpha is 0 in {CONFIG_FILE}; the adapter does nothing")
    out_type = DTYPES[dtype]
    tensors: list[tuple[str, np.ndarray]] = []
    for module in _bar(sorted(pairs), progress, f"converting {info.name} to GGUF"):
        base = names.gguf_name(module)
        if base is None:  # validation passed, so this is a module without a GGUF LoRA form
            raise AdapterIncompatibleError(
                f"{who}: module {module} has no GGUF tensor in architecture {model.arch!r}; retrain without it in "
                "target_modules, or run the adapter on the transformers backend"
            )
        a = pairs[module]["A"].astype(np.float32)
        b = pairs[module]["B"].astype(np.float32)
        rank = a.shape[0]
        factor = _peft_scale(cfg, module, rank) * rank / alpha  # llama.cpp applies alpha / rank
        if factor != 1.0:
            b = b * np.float32(factor)
        heads = permuted_heads(model.arch, base, model.n_head, model.n_head_kv)
        if heads is not None:
            b = permute_rows(b, heads)
        tensors.append((f"{base}.weight.lora_a", np.ascontiguousarray(a, dtype=out_type)))
        tensors.append((f"{base}.weight.lora_b", np.ascontiguousarray(b, dtype=out_type)))
    carried = {k: cfg[k] for k in _CARRIED if cfg.get(k) is not None}
    meta = {
        KEY_HEADS: model.n_head,
        KEY_HEADS_KV: model.n_head_kv,
        KEY_PEFT: json.dumps(carried, sort_keys=True),
    }
    return _write_lora(Path(out_path), model.arch, info.name, alpha, tensors, meta, dtype, writing)


def _write_lora(out: Path, arch: str, name: str, alpha: float, tensors, meta: dict, dtype: str,
                writing: dict | None = None) -> Path:
    import gguf

    out = out.expanduser()
    with atomic_file(out, **(writing or {})) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        try:
            w.add_type(gguf.GGUFType.ADAPTER)
            w.add_name(name)
            w.add_string(gguf.Keys.Adapter.TYPE, "lora")
            w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
            w.add_uint32(KEY_HEADS, int(meta[KEY_HEADS]))
            w.add_uint32(KEY_HEADS_KV, int(meta[KEY_HEADS_KV]))
            w.add_string(KEY_PEFT, meta[KEY_PEFT])
            for tname, data in tensors:
                w.add_tensor(tname, data)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return out


def _bar(items, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="module", disable=not progress, leave=False)


# -- GGUF -> PEFT --------------------------------------------------------------


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_lora_to_peft(
    lora_gguf: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    base_gguf: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Convert a GGUF LoRA (adaptrix's or llama.cpp's) into a PEFT folder; returns ``out_dir``.

    ``base_gguf`` supplies the head counts needed to undo the q/k row
    permutation when the file does not carry them (files llama.cpp wrote).
    """
    import gguf
    from safetensors.numpy import save_file

    path = Path(lora_gguf).expanduser()
    if not path.is_file():
        raise AdapterFormatError(f"GGUF LoRA {path} does not exist")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:
        raise AdapterFormatError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    kind, lora_type = _field(reader, "general.type"), _field(reader, gguf.Keys.Adapter.TYPE)
    if kind != "adapter" or lora_type != "lora":
        raise AdapterFormatError(
            f"{path} is not a GGUF LoRA (general.type={kind!r}, adapter.type={lora_type!r}; expected 'adapter' "
            "and 'lora'); pass a LoRA file made by adaptrix or llama.cpp's convert_lora_to_gguf.py"
        )
    arch = str(_field(reader, "general.architecture"))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise AdapterIncompatibleError(
            f"{path}: architecture {arch!r} is not supported by the LoRA converter (supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}); use llama.cpp's own tools for it"
        )
    alpha = float(_field(reader, gguf.Keys.Adapter.LORA_ALPHA, 0.0))
    n_head, n_head_kv = _field(reader, KEY_HEADS), _field(reader, KEY_HEADS_KV)
    if n_head is None and base_gguf is not None:
        base = read_gguf_model(base_gguf)
        if base.arch != arch:
            raise AdapterIncompatibleError(
                f"{path} is a LoRA for architecture {arch!r} but base {base.path} is {base.arch!r}; pass its own base"
            )
        n_head, n_head_kv = base.n_head, base.n_head_kv
    pairs: dict[str, dict[str, np.ndarray]] = {}
    layers = 0
    for t in reader.tensors:
        stem, _, ab = t.name.rpartition(".")
        if ab not in ("lora_a", "lora_b") or not stem.endswith(".weight"):
            raise AdapterFormatError(f"{path}: tensor {t.name} is not a .lora_a/.lora_b tensor of a GGUF LoRA")
        base_name = stem[: -len(".weight")]
        pairs.setdefault(base_name, {})[ab] = np.array(t.data, dtype=np.float32).reshape(
            tuple(int(d) for d in reversed(list(t.shape)))
        )
        if (m := re.match(r"blk\.(\d+)\.", base_name)) is not None:
            layers = max(layers, int(m.group(1)) + 1)
    names = arch_names(arch, max(layers, 1))
    state: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    for base_name in _bar(sorted(pairs), progress, f"converting {path.name} to PEFT"):
        p = pairs[base_name]
        module = names.hf_name(base_name)
        if module is None or set(p) != {"lora_a", "lora_b"}:
            raise AdapterFormatError(
                f"{path}: tensor pair {base_name}.weight.lora_a/lora_b is incomplete or names no "
                f"{arch!r} module adaptrix knows"
            )
        a, b = p["lora_a"], p["lora_b"]
        heads = permuted_heads(arch, base_name, n_head or 0, n_head_kv or 0)
        if heads is not None:
            if not n_head:
                raise AdapterFormatError(
                    f"{path} does not record the base model's head counts, needed to undo llama.cpp's q/k row "
                    "permutation; pass base_gguf= (the base model's .gguf)"
                )
            b = unpermute_rows(b, heads)
        state[f"{_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a)
        state[f"{_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b)
        ranks[module] = a.shape[0]
    if not state:
        raise AdapterFormatError(f"{path} holds no LoRA tensors")
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    cfg = _peft_config(reader, ranks, rank, alpha)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return out


def _peft_config(reader, ranks: dict[str, int], rank: int, alpha: float) -> dict[str, Any]:
    """A peft LoraConfig dict whose scales equal llama.cpp's (``alpha / rank``, or 1 where alpha is 0)."""
    carried: dict[str, Any] = {}
    raw = _field(reader, KEY_PEFT)
    if raw:
        try:
            carried = json.loads(raw)
        except ValueError:
            carried = {}
    leaves = sorted({m.rsplit(".", 1)[-1] for m in ranks})
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": rank,
        "lora_alpha": alpha if alpha else rank,
        "target_modules": leaves,
        "rank_pattern": {m: r for m, r in ranks.items() if r != rank},
        # llama.cpp scales by 1 when alpha is 0: alpha = rank per module gives peft the same scale
        "alpha_pattern": {m: r for m, r in ranks.items() if r != rank} if not alpha else {},
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    cfg.update({k: v for k, v in carried.items() if k in _CARRIED})
    if isinstance(cfg.get("target_modules"), list) and not set(leaves) <= set(cfg["target_modules"]):
        cfg["target_modules"] = leaves
    return cfg
