"""What an adapter folder holds, read without loading a single tensor.

``adapter_config.json`` gives the PEFT settings; the safetensors header (an
8-byte little-endian length, then that many bytes of JSON) gives every
tensor's name, dtype and shape; ``adaptrix.json`` (optional) gives a
description, a task type and tags.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from adaptrix.errors import AdapterFormatError, AdapterNotFoundError
from adaptrix.models import modelconfig

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.types import Hooks

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
META_FILE = "adaptrix.json"

_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


@attrs.frozen
class TensorSpec:
    """One tensor as the file header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    #: Where its data lies in the file, ``(start, stop)`` bytes from the file's start (``None``: not from a file).
    offsets: tuple[int, int] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class AdapterInfo:
    """An adapter as read from disk (config + safetensors header + adaptrix.json)."""

    name: str
    path: str
    peft_type: str | None
    rank: int | None
    alpha: float | None
    target_modules: tuple[str, ...] | str | None
    modules_to_save: tuple[str, ...]
    base_model: str | None
    base_family: str | None
    #: ``None`` when the folder holds no weights file (config only).
    tensor_count: int | None
    tensor_bytes: int | None
    #: ``safetensors``, ``pickle`` (adapter_model.bin) or ``None`` (no weights).
    weights_format: str | None
    weights_file: str | None
    description: str | None = None
    task_type: str | None = None
    tags: tuple[str, ...] = ()
    #: adaptrix.json as read (empty when absent).
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: adapter_config.json as read.
    config: dict[str, Any] = attrs.field(factory=dict, repr=False)
    #: Tensor specs from the header (empty for config-only or pickle folders).
    tensors: tuple[TensorSpec, ...] = attrs.field(default=(), repr=False)
    #: How ``base_family`` was decided: ``config`` (base config.json read) or ``id`` (name only).
    family_source: str | None = None
    #: Built from other adapters (``compose``) rather than read from a folder: ``path`` is a description,
    #: there is no folder to reload it from, so it is never evicted, only unloaded.
    composed: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False, filter=lambda a, v: a.name not in ("config", "tensors"))
        if isinstance(d["target_modules"], tuple):
            d["target_modules"] = list(d["target_modules"])
        d["modules_to_save"] = list(d["modules_to_save"])
        d["tags"] = list(d["tags"])
        d["tensors"] = "absent" if self.tensor_count is None else self.tensor_count
        return d

    @property
    def targets_text(self) -> str:
        t = self.target_modules
        if t is None:
            return "-"
        return t if isinstance(t, str) else ", ".join(t)


def read_json_object(path: Path, adapter: str) -> dict[str, Any]:
    """Parse a JSON object file, raising :class:`AdapterFormatError` naming adapter and file."""
    return modelconfig.read_json_object(
        path, AdapterFormatError, f"adapter {adapter!r}: ", "fix the file or re-save the adapter with save_pretrained()"
    )


def read_safetensors_header(path: Path, adapter: str = "?") -> tuple[list[TensorSpec], dict[str, str], int]:
    """Return ``(tensors, __metadata__, data bytes)`` from a safetensors file's header only.

    Raises :class:`AdapterFormatError` for a short, truncated or garbled file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise AdapterFormatError(
                    f"adapter {adapter!r}: {path} is {size} bytes, too short to be a safetensors file "
                    "(needs an 8-byte header length); re-save or re-download it"
                )
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise AdapterFormatError(
                    f"adapter {adapter!r}: {path} declares a {n}-byte header but the file has {size - 8} bytes "
                    "after the length; the file is truncated or not safetensors, re-save or re-download it"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise AdapterFormatError(f"adapter {adapter!r}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(
            f"adapter {adapter!r}: {path} has an unreadable safetensors header ({exc}); re-save or re-download it"
        ) from exc
    meta = header.pop("__metadata__", None) or {}
    tensors, end = [], 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFormatError(
                f"adapter {adapter!r}: {path}: header entry for tensor {name!r} is malformed ({entry!r})"
            ) from exc
        for field, values in (("shape", shape), ("data_offsets", [start, stop])):
            if not isinstance(values, list) or not all(_whole(v) for v in values):
                raise AdapterFormatError(
                    f"adapter {adapter!r}: {path}: tensor {name!r} has {field} {values!r}; a safetensors header "
                    "holds non-negative whole numbers there. The file is corrupt: re-save or re-download it"
                )
        if not isinstance(dtype, str):
            raise AdapterFormatError(f"adapter {adapter!r}: {path}: tensor {name!r} has dtype {dtype!r}, not a name")
        spec = TensorSpec(name, dtype, tuple(shape), offsets=(8 + n + int(start), 8 + n + int(stop)))
        count = 1
        for dim in spec.shape:
            count *= dim
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and int(stop) - int(start) != count * width:
            raise AdapterFormatError(
                f"adapter {adapter!r}: {path}: tensor {name!r} has shape {list(spec.shape)} ({dtype}, "
                f"{count * width} bytes) but its data span is {int(stop) - int(start)} bytes; the file is corrupt, "
                "re-save or re-download it"
            )
        tensors.append(spec)
        end = max(end, int(stop))
    available = size - 8 - n
    if end > available:
        raise AdapterFormatError(
            f"adapter {adapter!r}: {path} is truncated: its header places tensor data up to byte {end} but "
            f"only {available} bytes follow the header; re-save or re-download the adapter"
        )
    return tensors, meta, end


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


#: adapter_config.json fields adaptrix reads, and the JSON types peft writes there.
_CONFIG_FIELDS = {
    "peft_type": ("a name such as \"LORA\"", lambda v: isinstance(v, str)),
    "r": ("a positive whole number", lambda v: _whole(v) and v > 0),
    "lora_alpha": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "target_modules": ("a list of module names or one regex string", lambda v: isinstance(v, str) or _names(v)),
    "modules_to_save": ("a list of module names", _names),
    "exclude_modules": ("a list of module names or one regex string", lambda v: isinstance(v, str) or _names(v)),
    "layers_to_transform": ("a layer number or a list of them", lambda v: _whole(v) or (
        isinstance(v, list) and all(_whole(x) for x in v))),
    "rank_pattern": ("an object of pattern -> rank", lambda v: isinstance(v, dict) and all(_whole(x) for x in v.values())),
    "alpha_pattern": ("an object of pattern -> alpha", lambda v: isinstance(v, dict) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())),
    "base_model_name_or_path": ("a model id or path", lambda v: isinstance(v, str)),
}


def check_config_fields(cfg: dict[str, Any], path: Path, adapter: str) -> None:
    """Raise :class:`AdapterFormatError` naming the file, field and value of a field of the wrong type."""
    for field, (expected, ok) in _CONFIG_FIELDS.items():
        value = cfg.get(field)
        if value is not None and not ok(value):
            raise AdapterFormatError(
                f"adapter {adapter!r}: {path}: field {field!r} is {value!r}; it must be {expected}. "
                "Fix the file or re-save the adapter with save_pretrained()"
            )


def base_family(base_model: str | None, host: "Hooks") -> tuple[str | None, str | None]:
    """Family of the adapter's base model through the ``detect_family`` hook.

    Uses the base model's config.json when it is on disk (a local folder or the
    Hugging Face cache; never the network), else the id alone.
    Returns ``(family, "config" | "id")`` or ``(None, None)``.
    """
    if not base_model:
        return None, None
    config = _local_config(base_model)
    try:
        family, _ = host.call_first("detect_family", model_id=base_model, config=config)
    except Exception:
        family = None
    if family is None and config is not None:
        try:
            family, _ = host.call_first("detect_family", model_id=base_model, config=None)
            return family, ("id" if family else None)
        except Exception:
            return None, None
    return family, (("config" if config is not None else "id") if family else None)


def _local_config(model_id: str) -> dict[str, Any] | None:
    path = Path(model_id).expanduser()
    try:
        if path.is_dir() and (path / "config.json").is_file():
            return json.loads((path / "config.json").read_text(encoding="utf-8"))
        if path.is_absolute() or model_id.startswith((".", "~")):
            return None
        if model_id.count("/") > 1:
            return None
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model_id, "config.json")
        if isinstance(hit, str):
            return json.loads(Path(hit).read_text(encoding="utf-8"))
    except Exception:
        return None
    return None


def read_adapter_info(path: str | Path, name: str | None = None, *, host: "Hooks | None" = None) -> AdapterInfo:
    """Read an adapter folder (no tensors loaded). ``name`` defaults to the folder name.

    ``host``: the plugin host that names the base model's family (``base_family``); without one the
    family is left unknown (``None``).
    """
    path = Path(path).expanduser()
    name = name or path.name
    if not path.is_dir():
        raise AdapterNotFoundError(f"adapter {name!r}: {path} is not a folder")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        # name only adapter-like files: the folder may be anything the user pointed at
        present = ", ".join(sorted(p.name for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin")))
        raise AdapterFormatError(
            f"adapter {name!r}: {path} has no {CONFIG_FILE} (adapter files found: {present or 'none'}); "
            "an adapter is a folder "
            "saved with PeftModel.save_pretrained()"
        )
    cfg = read_json_object(cfg_path, name)
    check_config_fields(cfg, cfg_path, name)
    meta: dict[str, Any] = {}
    if (path / META_FILE).is_file():
        meta = read_json_object(path / META_FILE, name)
    tensors: list[TensorSpec] = []
    weights_format = weights_file = None
    count = nbytes = None
    st = path / WEIGHTS_FILE
    if st.is_file():
        tensors, _, nbytes = read_safetensors_header(st, name)
        count, weights_format, weights_file = len(tensors), "safetensors", str(st)
    elif (path / PICKLE_FILE).is_file():
        weights_format, weights_file = "pickle", str(path / PICKLE_FILE)
        nbytes = (path / PICKLE_FILE).stat().st_size
    targets = cfg.get("target_modules")
    if isinstance(targets, (list, tuple, set)):
        targets = tuple(sorted(str(t) for t in targets))
    base = cfg.get("base_model_name_or_path")
    family, source = base_family(base, host) if host is not None else (None, None)
    tags = meta.get("tags") or ()
    return AdapterInfo(
        name=name,
        path=str(path),
        peft_type=cfg.get("peft_type"),
        rank=cfg.get("r"),
        alpha=cfg.get("lora_alpha"),
        target_modules=targets,
        modules_to_save=tuple(cfg.get("modules_to_save") or ()),
        base_model=base,
        base_family=family,
        tensor_count=count,
        tensor_bytes=nbytes,
        weights_format=weights_format,
        weights_file=weights_file,
        description=meta.get("description"),
        task_type=meta.get("task_type"),
        tags=tuple(tags) if isinstance(tags, (list, tuple)) else (str(tags),),
        metadata=meta,
        config=cfg,
        tensors=tuple(tensors),
        family_source=source,
    )


def load_pickle_state(path: Path, name: str) -> dict:
    """An adapter_model.bin the user allowed, read with ``torch.load(weights_only=True)`` (no code runs)."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterFormatError(
            f"adapter {name!r}: {path} could not be read with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {exc}); it may hold code or be corrupt: convert it to safetensors"
        ) from exc
    if not isinstance(state, dict):
        raise AdapterFormatError(f"adapter {name!r}: {path} holds a {type(state).__name__}, not a state dict")
    return state
