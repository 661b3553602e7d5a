"""adaptrix's on-disk caches: where they live, what they hold, and their size budgets.

The root is ``$ADAPTRIX_CACHE``, else ``$XDG_CACHE_HOME/adaptrix``, else
``~/.cache/adaptrix``. Each kind of cached thing is a :class:`CacheKind` with
its own sub-folder: the core's ``gguf`` (GGUF models converted for
transformers), ``imported`` (adapter files converted to PEFT folders) and
``eval`` (evaluation results), and
those plugins list through the ``caches`` hook (the llama.cpp backend's
``lora``). ``adaptrix cache`` shows and clears them (:func:`cache_kinds`).

An entry's last use is its modification time: a reader :func:`touch` es an
entry it reuses. A kind with a budget (an environment variable, else its
default) evicts its least recently used entries after each new one
(:func:`enforce_budget`); entries used in the last :data:`IN_USE_SECONDS` are
kept, as another process may be opening them.

Writers get their folder from :func:`cache_dir`, which refuses an unusable
root (a file, read-only, not writable) with a :class:`StorageError` that names
``ADAPTRIX_CACHE``, and write under :func:`cache_guard`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import attrs

from adaptrix.errors import PluginError, StorageError
from adaptrix.storage.files import HOST, guard, human_bytes, remove_stale

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.types import Hooks

#: Entries used this recently are never evicted (another process may be about to open the path it was given).
IN_USE_SECONDS = 10.0
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def cache_root() -> Path:
    """The adaptrix cache directory (not created here)."""
    env = os.environ.get("ADAPTRIX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "adaptrix"


def _where() -> str:
    env = os.environ.get("ADAPTRIX_CACHE")
    return f"ADAPTRIX_CACHE={env}" if env else f"{cache_root()}, ADAPTRIX_CACHE unset"


def _remedy(full: bool = False) -> str:
    if full:
        return (f"free some space (`adaptrix cache clear` empties the cache), or set ADAPTRIX_CACHE to a folder "
                f"on a disk with room (now {_where()})")
    return f"set ADAPTRIX_CACHE to a folder adaptrix can write (now {_where()})"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def parse_size(text: str) -> int | None:
    """``"2G"``, ``"500MiB"``, ``"1.5g"``, ``"1048576"`` -> bytes (powers of 1024); ``none``/``off``/``unlimited`` -> None."""
    value = text.strip().lower()
    if value in ("none", "off", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", value)
    if m is None:
        raise ValueError(text)
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@attrs.frozen
class CacheEntry:
    """One cached thing: a file or folder under its kind's folder."""

    kind: str
    path: Path
    bytes: int
    #: When it was last written or reused (its modification time, seconds since the epoch).
    last_used: float

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.path.name, "path": str(self.path), "bytes": self.bytes,
                "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.last_used))}


@attrs.frozen
class CacheKind:
    """A kind of cached thing, in ``cache_root() / folder``; plugins list theirs through the ``caches`` hook."""

    #: Name shown to users and taken by ``adaptrix cache clear NAME``, e.g. ``"lora"``.
    name: str
    #: Sub-folder of the cache root.
    folder: str
    #: One line for ``adaptrix cache``.
    summary: str = ""
    #: Environment variable holding the size budget (``2G``, ``500M``, ``none``), if the kind has one.
    budget_env: str | None = None
    #: Budget in bytes when ``budget_env`` is unset (``None``: unbounded).
    default_budget: int | None = None
    #: Which names in the folder are entries (not bookkeeping, not temporaries); default: not hidden.
    is_entry: Callable[[Path], bool] = attrs.field(default=_visible, eq=False, repr=False)

    @property
    def root(self) -> Path:
        return cache_root() / self.folder

    def budget(self) -> int | None:
        """The size budget in bytes (``None``: unbounded); a bad value raises :class:`StorageError`."""
        if self.budget_env is None:
            return self.default_budget
        raw = os.environ.get(self.budget_env)
        if raw is None or not raw.strip():
            return self.default_budget
        try:
            return parse_size(raw)
        except ValueError:
            raise StorageError(
                f"{self.budget_env}={raw!r} is not a size; give bytes with an optional unit (500M, 2G) or 'none' "
                f"for no budget (default {_size_text(self.default_budget)})"
            ) from None

    def budget_source(self) -> str:
        if self.budget_env and (os.environ.get(self.budget_env) or "").strip():
            return f"from {self.budget_env}"
        return "default" + (f"; set {self.budget_env} to change it" if self.budget_env else "")


def _size_text(n: int | None) -> str:
    return "none" if n is None else human_bytes(n)


#: The core's own caches.
GGUF = CacheKind(
    "gguf", "gguf", "GGUF models converted to safetensors folders for the transformers backend",
    is_entry=lambda p: _visible(p) and p.is_dir(),
)
IMPORTED = CacheKind(
    "imported", "imported", "adapter files (GGUF LoRA) converted to PEFT folders by load_adapter",
    is_entry=lambda p: _visible(p) and p.is_dir(),
)
EVAL = CacheKind(
    "eval", "eval", "adaptrix eval/compare results: a folder per (model, adapter, backend, task), a file per item",
    is_entry=lambda p: _visible(p) and p.is_dir(),
)
CORE_KINDS = (GGUF, IMPORTED, EVAL)


def cache_kinds(host: "Hooks") -> dict[str, CacheKind]:
    """``{name: CacheKind}``: the core's, then every plugin's ``caches`` hook answer (first name wins)."""
    found = {k.name: k for k in CORE_KINDS}
    for plugin, items in host.call_all("caches"):
        if not isinstance(items, (list, tuple)) or not all(isinstance(k, CacheKind) for k in items):
            raise PluginError(
                f"plugin {plugin!r} returned {items!r:.120} from caches; return a list of adaptrix.storage.caches.CacheKind"
            )
        for kind in items:
            found.setdefault(kind.name, kind)
    return found


# -- writers ---------------------------------------------------------------------------------------------------


def cache_dir(kind: CacheKind) -> Path:
    """``kind``'s folder, created; an unusable cache root raises :class:`StorageError` naming ADAPTRIX_CACHE."""
    root, folder = cache_root(), kind.root
    if root.exists() and not root.is_dir():
        raise StorageError(
            f"the adaptrix cache {root} is a file, not a folder; set ADAPTRIX_CACHE to a folder adaptrix can "
            f"write (now {_where()}), or unset it to use ~/.cache/adaptrix",
            path=root,
        )
    with cache_guard(folder, "write into the cache folder"):
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe.{HOST}-{os.getpid()}-", suffix=".tmp", dir=folder)  # ask the OS
        os.close(fd)
        os.unlink(probe)
    return folder


def cache_writing(doing: str) -> dict[str, str]:
    """``doing=`` and ``remedy=`` for :mod:`adaptrix.storage.files` writers in the cache (the remedy names ADAPTRIX_CACHE)."""
    return {"doing": doing, "remedy": _remedy(), "full_remedy": _remedy(full=True)}


@contextlib.contextmanager
def cache_guard(path, doing: str) -> Iterator[None]:
    """:func:`adaptrix.storage.files.guard` with the cache's remedy."""
    with guard(path, **cache_writing(doing)):
        yield


# -- entries, budget, clearing ------------------------------------------------------------------------------------


def touch(path: str | os.PathLike) -> None:
    """Mark a reused entry as just used (its modification time); a read-only cache is left as it is."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def entries(kind: CacheKind) -> list[CacheEntry]:
    """``kind``'s entries, least recently used first."""
    try:
        items = [p for p in kind.root.iterdir() if kind.is_entry(p)]
    except OSError:
        return []
    out = []
    for p in items:
        try:
            out.append(CacheEntry(kind.name, p, _size(p), p.stat().st_mtime))
        except OSError:
            continue  # removed meanwhile
    return sorted(out, key=lambda e: (e.last_used, e.path.name))


def _remove(entry: CacheEntry) -> bool:
    try:
        if entry.path.is_dir() and not entry.path.is_symlink():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def enforce_budget(kind: CacheKind, keep: Iterable[str | os.PathLike] = (), now: float | None = None) -> list[CacheEntry]:
    """Evict ``kind``'s least recently used entries until it fits its budget; return the evicted.

    ``keep`` (the entry just written) and entries used in the last :data:`IN_USE_SECONDS` stay, even if
    the kind then stays over budget.
    """
    budget = kind.budget()
    if budget is None:
        return []
    now = time.time() if now is None else now
    kept = {Path(p).resolve() for p in keep}
    current = entries(kind)
    total = sum(e.bytes for e in current)
    evicted = []
    for entry in current:
        if total <= budget:
            break
        if entry.path.resolve() in kept or now - entry.last_used < IN_USE_SECONDS:
            continue
        if _remove(entry):
            total -= entry.bytes
            evicted.append(entry)
    return evicted


def clear(kind: CacheKind) -> list[CacheEntry]:
    """Remove every entry of ``kind`` and its stale temporaries (a running writer's are kept); return the removed."""
    removed = [e for e in entries(kind) if _remove(e)]
    remove_stale(kind.root)
    return removed
