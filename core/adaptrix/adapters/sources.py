"""Find an adapter: a name in ``adapters_dir``, a local folder, or a Hub id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from adaptrix.adapters.info import CONFIG_FILE, AdapterInfo
from adaptrix.errors import AdapterNotFoundError


def available_adapters(adapters_dir: str | Path | None) -> dict[str, Path]:
    """Adapter folders directly under ``adapters_dir`` (those holding adapter_config.json), by name."""
    if not adapters_dir:
        return {}
    root = Path(adapters_dir).expanduser()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / CONFIG_FILE).is_file()}


def adapter_rows(adapters_dir: str | Path | None, *, evicted: Mapping[str, Path] | None = None,
                 loaded: Mapping[str, AdapterInfo] | None = None, active: Sequence[str] = (),
                 merged: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The listing of adapters (``list_adapters``): available in ``adapters_dir``, ``evicted`` (name ->
    folder) and ``loaded``, by name, the ``active`` and ``merged`` ones marked."""
    rows: dict[str, dict[str, Any]] = {}
    for name, folder in available_adapters(adapters_dir).items():
        rows[name] = {"name": name, "path": str(folder), "loaded": False, "state": "available"}
    for name, folder in (evicted or {}).items():
        rows[name] = {"name": name, "path": str(folder), "loaded": False, "state": "evicted"}
    for name, info in (loaded or {}).items():
        rows[name] = {
            "name": name, "path": info.path, "loaded": True, "state": "loaded",
            "rank": info.rank, "base_model": info.base_model, "family": info.base_family,
            "bytes": info.tensor_bytes, "task_type": info.task_type,
        }
    for name, row in rows.items():
        row["active"] = name in active
        row["merged"] = name in merged
    return sorted(rows.values(), key=lambda r: r["name"])


def is_bare_name(text: str) -> bool:
    """One path component (no separator, not ``.``/``..``, not ``~``-expanded): a name, not a path."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return not any(sep in text for sep in seps) and text not in (".", "..") and not text.startswith("~")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_adapter(name_or_path: str | Path, adapters_dir: str | Path | None = None) -> tuple[str, Path]:
    """Return ``(name, folder)``.

    A bare name (one path component: ``math_specialist``) is looked up inside
    ``adapters_dir`` only, so a name can never reach outside it. Anything else
    is an explicit path (``./x``, ``../x``, ``/abs/x``, ``~/x``) when that
    folder exists, else a Hub repo id (``owner/name``) through
    ``huggingface_hub.snapshot_download``, which uses its cache and honours
    ``HF_HUB_OFFLINE``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise AdapterNotFoundError(
            f"adapter names are strings (a name in adapters_dir, a folder or a Hub id), got {name_or_path!r}"
        )
    text = str(name_or_path)
    if not text.strip() or "\0" in text:
        raise AdapterNotFoundError(f"adapter {text!r} is not a name: give a name in adapters_dir, a folder or a Hub id")
    if is_bare_name(text):
        candidate = Path(adapters_dir).expanduser() / text if adapters_dir else None
        if candidate is not None and candidate.is_dir():
            return candidate.name, candidate
        known = ", ".join(available_adapters(adapters_dir)) or "(none)"
        raise AdapterNotFoundError(
            f"adapter {text!r} not found in adapters_dir {str(adapters_dir)!r} (available: {known}); "
            f"for a folder elsewhere pass its path (./{text}), for the Hub an id like owner/{text}"
        )
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AdapterNotFoundError(
                f"adapter {text!r}: {path} is a file; pass the adapter folder (holding {CONFIG_FILE})"
            )
        return path.resolve().name, path
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _from_hub(text, adapters_dir)
    known = ", ".join(available_adapters(adapters_dir)) or "(none)"
    raise AdapterNotFoundError(
        f"adapter {text!r} not found: no folder {text!r} in adapters_dir {str(adapters_dir)!r} "
        f"(available: {known}) and no such local path; pass a folder path or a Hub id like owner/name"
    )


def _from_hub(repo_id: str, adapters_dir) -> tuple[str, Path]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - dependency of the core
        raise AdapterNotFoundError(f"adapter {repo_id!r}: huggingface_hub is needed for Hub adapters") from exc
    try:
        local = snapshot_download(
            repo_id,
            allow_patterns=[CONFIG_FILE, "adapter_model.safetensors", "adapter_model.bin", "adaptrix.json", "*.md"],
        )
    except Exception as exc:
        hint = (
            "HF_HUB_OFFLINE is set and the adapter is not in the local Hugging Face cache; download it once online"
            if _offline()
            else "check the repo id, your network and, for private repos, `huggingface-cli login`"
        )
        known = ", ".join(available_adapters(adapters_dir)) or "(none)"
        raise AdapterNotFoundError(
            f"adapter {repo_id!r}: not in adapters_dir {str(adapters_dir)!r} (available: {known}), not a local "
            f"path, and the Hub download failed ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    return repo_id.split("/")[-1], Path(local)
