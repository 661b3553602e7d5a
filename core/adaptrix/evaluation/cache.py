"""Evaluation results cached one item at a time, so an interrupted or extended run computes only what is new.

An item's result is stored under a key made of everything that decides it:
the model's digest, the adapter's digest, the backend, the settings (metric,
token limit, sampling, sandbox limits) and the item itself (prompt, history,
choices, tests, gold answer). Each result is its own file, written atomically
(:func:`adaptrix.storage.files.atomic_file`), so a Ctrl-C or a crash leaves
every finished item readable and no half-written one. The files of one
(model, adapter, backend, settings) share a folder under ``<adaptrix
cache>/eval`` (``ADAPTRIX_CACHE``): ``adaptrix cache`` lists those folders.

Digests (:func:`path_digest`) cover the files' names, sizes and modification
times, not their bytes: a changed file changes the digest without reading
gigabytes of weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from adaptrix.storage.caches import EVAL, cache_dir, cache_writing, touch
from adaptrix.storage.files import atomic_file

#: Bump when what a cached result holds changes meaning.
VERSION = 1


def path_digest(path: str | os.PathLike) -> str:
    """A digest of a file or folder: relative names, sizes and modification times of every file in it."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        rel = f.name if f == path else f.relative_to(path).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def text_digest(*parts: Any) -> str:
    """A digest of JSON-able values."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ResultCache:
    """Item results by key; ``enabled=False`` (``--no-cache``) reads nothing and writes nothing."""

    def __init__(self, enabled: bool = True, folder: str | os.PathLike | None = None):
        self.enabled = enabled
        self._folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.writes = 0

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = cache_dir(EVAL)
        return self._folder

    @staticmethod
    def key(model: str, adapter: str, backend: str, settings: dict[str, Any], item: dict[str, Any],
            label: str = "") -> str:
        """``cell/item``: a folder per (model, adapter, backend, settings), named after ``label`` for people
        (``adaptrix cache`` lists these folders), and a file per item."""
        cell = json.dumps([VERSION, model, adapter, backend, settings], sort_keys=True, default=str)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")[:60]
        folder = f"{slug}-{hashlib.sha256(cell.encode()).hexdigest()[:16]}" if slug else \
            hashlib.sha256(cell.encode()).hexdigest()[:16]
        item_key = hashlib.sha256(json.dumps([cell, item], sort_keys=True, default=str).encode()).hexdigest()
        return f"{folder}/{item_key}"

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result, or ``None`` (absent, disabled, or unreadable: then it is computed again)."""
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(value, dict):
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self._path(key)
        with atomic_file(path, **cache_writing("write an evaluation result into the cache")) as tmp:
            tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        touch(path.parent)
        self.writes += 1
