"""Convert a ``.gguf`` file once into a cached safetensors model folder.

transformers can load a GGUF file directly, but it dequantizes every tensor
and rebuilds the tokenizer from GGUF metadata on every load (about 30 s for
SmolLM2-135M on two CPU cores). adaptrix does that once, saves the result with
``save_pretrained`` (safetensors) and loads the folder afterwards (< 2 s).

Layout, under :func:`adaptrix.storage.caches.cache_root` (``$ADAPTRIX_CACHE``, else
``$XDG_CACHE_HOME/adaptrix``, else ``~/.cache/adaptrix``)::

    gguf/index.json            {"<abs path>|<size>|<mtime_ns>": "<sha256>"}
    gguf/<sha256>/             config.json, model.safetensors, tokenizer files,
                               adaptrix-gguf.json (written last: "complete")

The folder is keyed by the file's SHA-256, so a renamed or copied file reuses
it. Hashing 100 MB costs a fraction of a second but is skipped anyway: the
index maps (path, size, mtime) to the hash (a read-only cache skips writing it).
A conversion is written into a temporary sibling folder and renamed into
place (:func:`adaptrix.storage.files.new_folder`), so a crash, Ctrl-C or a full disk
never leaves a half-written folder that a later load would trust; a full disk
or an unusable cache is a :class:`~adaptrix.errors.StorageError` naming the
folder and ``ADAPTRIX_CACHE``. Temporary folders a killed conversion left
behind are removed on the next call (:func:`adaptrix.storage.files.remove_stale`).

A folder found damaged (marker, ``config.json`` or safetensors weights
unreadable or truncated) is deleted and converted again, with a warning that
names it. Index values are trusted only when they are SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
import warnings
from pathlib import Path
from typing import Callable

import attrs

from adaptrix.errors import ModelConfigError, ModelLoadError, StorageError
from adaptrix.models.modelconfig import gguf_config, read_json_object, retype_converted_config
from adaptrix.storage.caches import GGUF, cache_dir, cache_root, cache_writing  # noqa: F401  (cache_root: re-exported)
from adaptrix.storage.files import atomic_file, new_folder, remove_stale

MARKER = "adaptrix-gguf.json"
INDEX = "index.json"
FORMAT_VERSION = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


class CacheWarning(UserWarning):
    """A cached conversion was damaged and is being redone."""

#: ``converter(gguf_path, out_dir, progress)`` writes a complete model folder into ``out_dir``.
Converter = Callable[[Path, Path, "object"], None]


@attrs.frozen
class CachedGGUF:
    """Where a GGUF file's converted folder lives, and whether this call converted it."""

    gguf_path: Path
    folder: Path
    sha256: str
    converted: bool
    seconds: float


def gguf_root() -> Path:
    return GGUF.root


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_index(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged index: it is only a shortcut, rebuild it
    if not isinstance(data, dict):
        return {}
    # A value becomes a folder name under the cache: anything but a digest ("../../etc") is dropped.
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and _DIGEST.fullmatch(v)}


def _write_index(root: Path, index: dict[str, str]) -> None:
    """Best effort: the index is only a shortcut, and a read-only cache may already hold every conversion."""
    try:
        with atomic_file(root / INDEX, doing="write the GGUF cache index") as tmp:
            tmp.write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    except StorageError:
        pass  # a full or read-only cache: the conversion that follows, if one is needed, says so


def file_sha256(path: Path, progress: bool = True) -> str:
    """SHA-256 of a file, with a byte progress bar for large files."""
    h = hashlib.sha256()
    size = path.stat().st_size
    bar = _bar(total=size, desc=f"hashing {path.name}", unit="B", unit_scale=True, disable=not progress or size < 2**26)
    with open(path, "rb") as fh, bar:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _bar(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def is_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished, undamaged conversion."""
    return damage(folder) is None


def damage(folder: Path) -> str | None:
    """What is wrong with a cached folder (``None`` when it is sound); reads headers only."""
    try:
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{MARKER} is missing or unreadable (an unfinished conversion)"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        return f"{MARKER} is not format {FORMAT_VERSION}"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"config.json is missing or not JSON ({type(exc).__name__})"
    if not isinstance(config, dict) or not config.get("model_type"):
        return "config.json holds no model_type"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for file in weights:
        problem = _safetensors_damage(file)
        if problem:
            return f"{file.name}: {problem}"
    return None


def _safetensors_damage(file: Path) -> str | None:
    """A truncated or garbled safetensors file: its header does not parse or promises more bytes than exist."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                return "shorter than a safetensors header"
            (n,) = struct.unpack("<Q", raw)
            if n > min(size, 1 << 28):
                return "header length is larger than the file"
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"unreadable header ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name!r} has no valid data_offsets"
        end = max(end, offsets[1])
    if 8 + n + end > size:
        return f"truncated: the header needs {8 + n + end} bytes, the file has {size}"
    return None


def check_gguf_file(path: Path) -> None:
    """Fail early, naming the file, when it is missing or not a GGUF file."""
    if not path.is_file():
        raise ModelConfigError(f"GGUF file {path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); the file is corrupt or "
            "truncated: re-download it"
        )

    try:
        gguf_config(path)  # the key/value header only: cheap, and catches truncation early
    except ModelConfigError as exc:
        raise ModelLoadError(f"{exc}; the file is corrupt or truncated: re-download it") from exc


def _digest(path: Path, root: Path, progress: bool) -> str:
    """The file's SHA-256, through the (path, size, mtime) index when it knows the file."""
    key = _stat_key(path)
    digest = _read_index(root).get(key)
    if digest is None:
        digest = file_sha256(path, progress)
        index = _read_index(root)  # another process may have added entries meanwhile
        index[key] = digest
        _write_index(root, index)
    return digest


def lookup(gguf_path: str | os.PathLike) -> Path | None:
    """The converted folder of ``gguf_path`` when one is cached and sound; never converts."""
    path = Path(gguf_path).expanduser()
    check_gguf_file(path)
    folder = gguf_root() / _digest(path, gguf_root(), progress=False)
    return folder if is_complete(folder) else None


def cached_folder(gguf_path: str | os.PathLike, *, progress: bool = True, converter: Converter | None = None) -> CachedGGUF:
    """Return the converted folder of ``gguf_path``, converting it first if needed.

    A damaged folder is reported (:class:`CacheWarning`), deleted and converted again.
    """
    start = time.perf_counter()
    path = Path(gguf_path).expanduser()
    check_gguf_file(path)
    root = gguf_root()
    remove_stale(root)
    digest = _digest(path, root, progress)
    folder = root / digest
    problem = damage(folder) if folder.exists() else "absent"
    if problem is None:
        return CachedGGUF(path, folder, digest, False, time.perf_counter() - start)
    cache_dir(GGUF)
    if folder.exists():
        warnings.warn(
            f"the cached conversion of {path} at {folder} is damaged ({problem}); deleting it and converting "
            "again",
            CacheWarning,
            stacklevel=2,
        )
        shutil.rmtree(folder, ignore_errors=True)
    _convert_atomically(path, folder, digest, progress, converter or convert_with_transformers)
    return CachedGGUF(path, folder, digest, True, time.perf_counter() - start)


def _convert_atomically(path: Path, folder: Path, digest: str, progress: bool, converter: Converter) -> None:
    with new_folder(folder, **cache_writing(f"write the conversion of {path.name} to")) as tmp:
        converter(path, tmp, progress)
        meta = {
            "format": FORMAT_VERSION,
            "source": str(path.resolve()),
            "sha256": digest,
            "size": path.stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if folder.exists() and not is_complete(folder):  # an incomplete leftover; a complete one is kept
            shutil.rmtree(folder, ignore_errors=True)


def convert_with_transformers(path: Path, out_dir: Path, progress: bool = True) -> None:
    """Dequantize ``path`` with transformers and save model + tokenizer into ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = _bar(total=3, desc=f"converting {path.name} (once)", unit="step", disable=not progress)
    with steps:
        steps.set_postfix_str("tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot build a tokenizer from {path} ({type(exc).__name__}: {exc}); the GGUF file is corrupt, "
                "truncated or of an architecture transformers cannot read: re-download it or use a safetensors folder"
            ) from exc
        steps.update(1)
        steps.set_postfix_str("weights")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read the weights of {path} ({type(exc).__name__}: {exc}); the GGUF file is corrupt, "
                "truncated or uses a quantization transformers cannot dequantize: re-download it"
            ) from exc
        steps.update(1)
        steps.set_postfix_str("saving safetensors")
        _drop_gguf_quantizer(model)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))

        _retype(out_dir / "config.json", gguf_config(path)["model_type"])
        steps.update(1)


def _retype(cfg_file: Path, header_type: str) -> None:
    """Save the converted folder under the header's model type (a Mistral GGUF reads as llama in transformers)."""
    config = read_json_object(cfg_file)
    retyped = retype_converted_config(config, header_type)
    if retyped is not config:
        cfg_file.write_text(json.dumps(retyped, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _drop_gguf_quantizer(model) -> None:
    """Make a dequantized GGUF model an ordinary one, so ``save_pretrained`` writes plain safetensors.

    Without GGUF matmul kernels transformers dequantizes every weight at load
    time but keeps its GGUF quantizer attached, which refuses to serialize.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise ModelLoadError(
            "transformers kept this GGUF model's weights packed (GGUF kernels are installed); adaptrix caches "
            "dense weights: uninstall the 'kernels' package or load a safetensors folder"
        )
    model.hf_quantizer = None
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            try:
                delattr(cfg, "quantization_config")
            except AttributeError:
                pass
