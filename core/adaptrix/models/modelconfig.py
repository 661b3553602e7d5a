"""Read a model's ``config.json`` (or GGUF metadata) without importing torch.

Also the small, family-neutral facts plugins need from a config: is it a causal
LM, how long is its context, does it need remote code.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from adaptrix.errors import ModelConfigError, NotACausalLMError
from adaptrix.models import lm_classes as registry

#: Architecture suffixes of models that generate text token by token.
GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def read_json_object(
    path: Path,
    error: type[Exception] = ModelConfigError,
    prefix: str = "",
    fix: str = "fix or re-download the file",
) -> dict[str, Any]:
    """Parse a file holding one JSON object; raise ``error`` naming the file, position and ``fix``.

    ``prefix`` starts every message (e.g. ``"adapter 'math': "``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{prefix}cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{prefix}{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {fix}"
        ) from exc
    if not isinstance(data, dict):
        raise error(f"{prefix}{path} must hold a JSON object, found {type(data).__name__}")
    return data



def is_gguf(model_id: str) -> bool:
    return str(model_id).lower().endswith(".gguf")


def looks_local(model_id: str) -> bool:
    """True when ``model_id`` names something on disk rather than a Hub repo."""
    p = Path(os.path.expanduser(str(model_id)))
    return p.exists() or str(model_id).startswith((".", "/", "~")) or is_gguf(model_id)


def gguf_file_of(model_id: str) -> Path | None:
    """The ``.gguf`` file ``model_id`` names: the file itself, or the one ``.gguf`` in a folder without config.json.

    A folder holding several ``.gguf`` files and no config.json is ambiguous: a
    :class:`ModelConfigError` lists them.
    """
    path = Path(os.path.expanduser(str(model_id)))
    if is_gguf(str(model_id)):
        return path
    if path.is_dir() and not (path / "config.json").exists():
        files = sorted(path.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise ModelConfigError(
                f"model folder {path} holds {len(files)} .gguf files ({', '.join(f.name for f in files)}) and no "
                "config.json; pass the .gguf file you mean"
            )
    return None


def check_model_id(model_id) -> str:
    """``model_id`` as a string, or a :class:`ModelConfigError` when it names no model (empty, not a path)."""
    if not isinstance(model_id, (str, os.PathLike)) or not str(model_id).strip():
        raise ModelConfigError(
            f"model_id {model_id!r} names no model: give a Hub id, a model folder or a .gguf file "
            "(or leave it out for the embedded default model)"
        )
    return str(model_id)


def load_config(model_id: str, revision: str | None = None) -> tuple[dict[str, Any], str]:
    """Return ``(config, source)`` for a Hub id, a local folder, a config.json or a .gguf file.

    Raises :class:`ModelConfigError` naming the path when it cannot be read.
    Hub ids go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``).
    A GGUF file gives the config its header holds (:func:`gguf_config`).
    """
    model_id = check_model_id(model_id)
    path = Path(os.path.expanduser(model_id))
    gguf = gguf_file_of(model_id)
    if gguf is not None:
        if not gguf.is_file():
            raise ModelConfigError(f"GGUF file {gguf} does not exist")
        return gguf_config(gguf), str(gguf)
    if path.is_file():
        return read_json_object(path), str(path)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelConfigError(
                f"model folder {path} has no config.json; point adaptrix at a folder saved with "
                "save_pretrained() (config.json + weights), a config.json file or a .gguf file"
            )
        return read_json_object(cfg), str(cfg)
    if looks_local(model_id):
        raise ModelConfigError(f"model path {path} does not exist")
    return _hub_config(model_id, revision)


def _hub_config(repo_id: str, revision: str | None) -> tuple[dict[str, Any], str]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - dependency of the core
        raise ModelConfigError("huggingface_hub is required to read Hub models") from exc
    try:
        local = hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        hint = (
            "HF_HUB_OFFLINE is set and the file is not in the local cache; download it once online"
            if offline
            else "check the repo id, your network and, for gated models, `huggingface-cli login`"
        )
        raise ModelConfigError(
            f"cannot fetch config.json of {repo_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    return read_json_object(Path(local)), local


#: GGUF ``general.architecture`` values whose transformers ``model_type`` differs.
_GGUF_ARCH_TO_MODEL_TYPE = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gemma3": "gemma3_text"}

#: llama.cpp converts Mistral and Mixtral checkpoints to GGUF ``llama``; only ``general.name`` tells them
#: apart ("Mistral 7B Instruct v0.3", "Mixtral 8x7B", "Ministral 8B"). transformers' GGUF reader makes the
#: same call, but only for a name that is exactly "mistral".
_MISTRAL_NAME = re.compile(r"mi(?:s|x|nis)tral", re.IGNORECASE)

#: ``(model_type transformers' GGUF reader gives, model_type the header says)`` -> the config fields that
#: make a converted folder of the first load as the second with the same computation. Mistral weights
#: read as llama are Mistral's; llama.cpp's ``llama`` graph attends to the whole context (no sliding window).
GGUF_RETYPED: dict[tuple[str, str], dict[str, Any]] = {
    ("llama", "mistral"): {"architectures": ["MistralForCausalLM"], "sliding_window": None},
}


def gguf_model_type(meta: dict[str, Any]) -> str:
    """The transformers ``model_type`` of a GGUF model from its header (``general.architecture``, ``general.name``).

    The one answer for every backend: the family, ``detect`` and the converted folder follow it.
    """
    arch = meta["general.architecture"]
    name = meta.get("general.name")
    if arch == "llama" and isinstance(name, str) and _MISTRAL_NAME.search(name):
        experts = meta.get("llama.expert_count")
        return "mixtral" if isinstance(experts, int) and experts > 0 else "mistral"
    return _GGUF_ARCH_TO_MODEL_TYPE.get(arch, arch)


def retype_converted_config(config: dict[str, Any], header_type: str) -> dict[str, Any]:
    """``config`` (transformers' reading of a GGUF) under the header's ``model_type`` where :data:`GGUF_RETYPED`
    says how; unchanged otherwise."""
    fields = GGUF_RETYPED.get((config.get("model_type"), header_type))
    if fields is None:
        return config
    return {**config, **fields, "model_type": header_type}


def gguf_config(path: Path) -> dict[str, Any]:
    """A minimal config dict from a GGUF file's metadata (reads the key/value header only)."""
    try:
        meta = read_gguf_metadata(
            path, wanted=("general.architecture", "general.name", "llama.expert_count"), suffix=".context_length"
        )
    except (OSError, ValueError, struct.error) as exc:
        raise ModelConfigError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    arch = meta.get("general.architecture")
    if not arch:
        raise ModelConfigError(f"{path} has no general.architecture field; is it a model GGUF?")
    model_type = gguf_model_type(meta)
    cfg: dict[str, Any] = {"model_type": model_type, "gguf_architecture": arch, "gguf_file": str(path)}
    ctx = meta.get(f"{arch}.context_length")
    if isinstance(ctx, int) and ctx > 0:
        cfg["max_position_embeddings"] = ctx
    if meta.get("general.name"):
        cfg["_name_or_path"] = meta["general.name"]
    return cfg


# GGUF value types: struct format of the scalar ones; 8 = string, 9 = array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(path: Path, wanted: tuple[str, ...] = (), suffix: str | None = None) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file, without numpy or reading tensors.

    Only keys in ``wanted`` or ending in ``suffix`` are kept (all when both are
    empty); arrays (the tokenizer vocabulary) are skipped over, not decoded.
    """
    return _read_gguf(path, wanted, suffix, with_tensors=False)[0]


def read_gguf_header(
    path: Path, wanted: tuple[str, ...] = (), suffix: str | None = None
) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """``(metadata, tensors)``: :func:`read_gguf_metadata` plus every tensor's name and shape.

    Shapes are in numpy (row-major) order, e.g. ``(out_features, in_features)``
    for a linear weight; no tensor data is read.
    """
    return _read_gguf(path, wanted, suffix, with_tensors=True)


def _read_gguf(path, wanted, suffix, with_tensors: bool):
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("missing GGUF magic bytes")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old (need 2 or later)")
        n_tensors, kv_count = struct.unpack("<QQ", f.read(16))

        def read_exact(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise ValueError("file ends inside the metadata header (truncated?)")
            return data

        def read_string() -> str:
            (n,) = struct.unpack("<Q", read_exact(8))
            if n > 1 << 24:
                raise ValueError(f"implausible string length {n}")
            return read_exact(n).decode("utf-8", errors="replace")

        def read_value(vtype: int):
            if vtype in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[vtype]
                return struct.unpack(fmt, read_exact(struct.calcsize(fmt)))[0]
            if vtype == 8:
                return read_string()
            if vtype == 9:
                (itype,) = struct.unpack("<I", read_exact(4))
                (count,) = struct.unpack("<Q", read_exact(8))
                if itype in _GGUF_SCALARS:
                    f.seek(struct.calcsize(_GGUF_SCALARS[itype]) * count, 1)
                elif itype == 8:  # strings: skip each by its length, undecoded
                    for _ in range(count):
                        (n,) = struct.unpack("<Q", read_exact(8))
                        f.seek(n, 1)
                else:
                    for _ in range(count):
                        read_value(itype)
                return None
            raise ValueError(f"unknown GGUF value type {vtype}")

        meta: dict[str, Any] = {}
        for _ in range(kv_count):
            key = read_string()
            (vtype,) = struct.unpack("<I", read_exact(4))
            keep = (not wanted and not suffix) or key in wanted or (suffix is not None and key.endswith(suffix))
            value = read_value(vtype)
            if keep and value is not None:
                meta[key] = value
        tensors: dict[str, tuple[int, ...]] = {}
        if with_tensors:
            for _ in range(n_tensors):
                name = read_string()
                (n_dims,) = struct.unpack("<I", read_exact(4))
                if n_dims > 8:
                    raise ValueError(f"tensor {name!r} declares {n_dims} dimensions")
                dims = struct.unpack(f"<{n_dims}Q", read_exact(8 * n_dims))
                read_exact(12)  # ggml type (uint32) and data offset (uint64)
                tensors[name] = tuple(int(d) for d in reversed(dims))
        return meta, tensors


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) else {}


def context_length(config: dict[str, Any] | None) -> int | None:
    """The model's context window in tokens, from its own config (or ``None``)."""
    if not config:
        return None
    for source in (config, _text_config(config)):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def architectures(config: dict[str, Any] | None) -> list[str]:
    if not config:
        return []
    archs = config.get("architectures") or []
    return [a for a in archs if isinstance(a, str)]


#: Config keys that hold a non-text tower next to the language model.
MULTIMODAL_KEYS = ("vision_config", "visual", "vision_tower", "audio_config", "vision_encoder")


def is_vision_language(config: dict[str, Any] | None) -> bool:
    """True for a multimodal config: a ``...ForConditionalGeneration`` or a vision/audio tower."""
    if not config:
        return False
    if any(a.endswith("ForConditionalGeneration") for a in architectures(config)):
        return True
    return any(isinstance(config.get(k), dict) for k in MULTIMODAL_KEYS)


def text_model_type(config: dict[str, Any] | None) -> str | None:
    """For a vision-language config, the ``model_type`` of the text-only causal LM to load from it.

    That is the config's own ``model_type`` when transformers' causal-LM class
    for it is text-only (``Qwen3_5ForCausalLM``), else its ``text_config``'s
    (``gemma3`` -> ``gemma3_text``). ``None`` when the installed transformers
    has no such class, for remote-code models, and for configs that are not
    vision-language.
    """
    if not is_vision_language(config) or needs_remote_code(config):
        return None
    own = model_type(config)
    if registry.text_only_class(own):
        return own
    text = _text_config(config)
    for candidate in (text.get("model_type"), f"{own}_text" if own else None):
        if registry.text_only_class(candidate):
            return candidate
    return None


def is_causal_lm(config: dict[str, Any] | None) -> bool | None:
    """True for a model adaptrix can run as a text causal LM, False otherwise, None when unsure.

    - A vision-language config (``...ForConditionalGeneration``, a vision
      tower) is True only when the installed transformers has a text-only
      causal-LM class to load its language model (:func:`text_model_type`);
      remote-code vision-language models are always False.
    - Otherwise decided from ``architectures``: ``...ForCausalLM`` /
      ``...LMHeadModel``. A config without architectures (a GGUF header) is
      taken as generative.
    """
    if not config:
        return None
    if is_vision_language(config):
        return text_model_type(config) is not None
    archs = architectures(config)
    if not archs:
        return True if config.get("gguf_architecture") else None
    if any(a.endswith(GENERATIVE_SUFFIXES) for a in archs):
        return True
    return False


def require_causal_lm(config: dict[str, Any] | None, source: str | None) -> None:
    """Raise :class:`NotACausalLMError` naming the file and the architectures."""
    if is_causal_lm(config) is False:
        raise NotACausalLMError(not_causal_lm_message(config, source))


def not_causal_lm_message(config: dict[str, Any] | None, source: str | None) -> str:
    archs = architectures(config)
    if is_vision_language(config) and needs_remote_code(config):
        kind = "a vision-language model with custom (remote) code, which adaptrix does not run"
    elif is_vision_language(config):
        kind = (
            "a vision-language model, and the installed transformers has no text-only causal LM class "
            "for its language model"
        )
    else:
        kind = "not a causal language model (an encoder or a classification/reward head)"
    return (
        f"{source or 'config'}: architectures {archs} (model_type {(config or {}).get('model_type')!r}) is "
        f"{kind}; adaptrix runs text generators whose architecture ends in "
        f"{' or '.join(GENERATIVE_SUFFIXES)}"
    )


def needs_remote_code(config: dict[str, Any] | None) -> bool:
    """True when the config points at custom modelling code (``auto_map``)."""
    return bool(config and isinstance(config.get("auto_map"), dict) and config["auto_map"])


def model_type(config: dict[str, Any] | None) -> str | None:
    return (config or {}).get("model_type")
