"""Adapters from a folder every node sees, or from an fsspec URL fetched into a local cache per node.

``--adapters-dir`` may be a path (shared storage, or the same folder on each node) or a URL fsspec opens
(``s3://bucket/adapters``, ``gs://...``, ``file:///srv/adapters``). A URL's adapters are fetched, each into
its own folder of :data:`CACHE` (``adaptrix cache`` shows and clears it), before they are validated and
loaded: an adapter folder is small (a LoRA's weights and config), so a whole copy is simpler than streaming.
A fetched copy is reused while the source's files keep their sizes and modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from adaptrix.storage.caches import CacheKind

#: Where replicas (and the ingress, for listing) keep adapters fetched from a URL.
CACHE = CacheKind("ray-adapters", "ray-adapters", "adapters fetched from an fsspec --adapters-dir by adaptrix-ray")
#: What marks a folder as an adapter.
_MARKERS = ("adapter_config.json",)
_STAMP = ".adaptrix-source.json"


def is_url(source: str | None) -> bool:
    """Whether ``source`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return bool(source) and "://" in str(source)


def join(root: str, name: str) -> str:
    """``root/name`` for a URL or a path."""
    return str(root).rstrip("/") + "/" + name


class AdapterStore:
    """Turns an adapter's source (a folder or a URL) into a local folder, fetching URLs into ``cache_dir``."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else CACHE.root

    def local(self, source: str) -> str:
        """A local folder holding the adapter at ``source``: the folder itself, or its fetched copy."""
        if not is_url(source):
            return source
        import fsspec

        fs, path = fsspec.core.url_to_fs(source)
        files = sorted((f["name"], f.get("size"), str(f.get("mtime") or f.get("LastModified") or ""))
                       for f in fs.find(path, detail=True).values() if f.get("type", "file") == "file")
        if not files:
            raise FileNotFoundError(f"no adapter at {source}: the URL holds no files (check --adapters-dir)")
        stamp = json.dumps({"source": source, "files": [[n[len(path):], s, m] for n, s, m in files]})
        name = path.rstrip("/").rsplit("/", 1)[-1]
        target = self.cache_dir / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{name}"
        if (target / _STAMP).is_file() and (target / _STAMP).read_text() == stamp:
            return str(target)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.cache_dir))
        try:
            for remote, _, _ in files:
                rel = remote[len(path):].lstrip("/")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(tmp / rel))
            (tmp / _STAMP).write_text(stamp)
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)  # atomic: a reader sees the old copy or the whole new one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(target)

    def mirror(self, url: str) -> str:
        """A local folder with a fetched copy of each adapter under ``url`` (``name/adapter_config.json``), so
        the ingress lists and describes them as it would a local ``--adapters-dir``."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        root = self.cache_dir / f"mirror-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
        root.mkdir(parents=True, exist_ok=True)
        names = []
        for entry in fs.ls(path, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "directory" and any(fs.exists(join(entry["name"], m)) for m in _MARKERS):
                names.append(name)
        for name in names:
            local = Path(self.local(join(url, name)))
            link = root / name
            if link.is_symlink() or link.exists():
                if link.resolve() == local.resolve():
                    continue
                link.unlink()
            link.symlink_to(local, target_is_directory=True)
        return str(root)
