"""Writing outputs safely: the one owner of how adaptrix writes files and folders.

- :func:`atomic_file`, :func:`new_folder`, :func:`replace_files` and
  :func:`replace_folder` write into a temporary sibling named
  ``.<name>.<host>-<pid>-<random>.tmp`` and move the result into place, so a
  crash, a ``kill -9`` or a full disk never leaves a half-written output that
  a later run would trust.
- Replacing an existing folder (:func:`replace_files`) moves in only the files
  the writer produced, the ``last`` one (``adapter_config.json``) after the
  rest, so the folder never looks complete while it mixes old and new files;
  nothing else in it is touched.
- :func:`overlap` finds an output that would replace or delete an input.
- :func:`guard` turns OS failures (full disk, read-only, no permission, a file
  where a folder should be) into :class:`~adaptrix.errors.StorageError`
  naming the path and the remedy.
- :func:`remove_stale` deletes the temporaries of writers that are gone: their
  process is dead (same host), or they have not been written to for
  :data:`STALE_TMP_SECONDS`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from adaptrix.errors import AdaptrixError, StorageError

#: A temporary not written to for this long is stale even if a process with its pid runs (pids are reused).
STALE_TMP_SECONDS = 3600
#: This host, in temporaries' names: a pid is only checked on the host that wrote it (shared caches).
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_NAME_MAX = 100  # the output's name is cut to this in a temporary's name (file names stop at 255 bytes)
_OURS = re.compile(r"^\.(?P<name>.*)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
#: Older adaptrix temporaries: ``.<name>.<random>.tmp`` (no pid: age only) and the GGUF cache's ``.tmp-<digest>-<pid>-<random>``.
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_LEGACY_GGUF = re.compile(r"^\.tmp-[0-9a-f]{12}-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "its folder does not exist or cannot hold files",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EEXIST: "something else already exists there",
}


# -- OS failures -> StorageError -------------------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 MB``; ``-`` for unknown."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def os_errno(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``: an ``OSError``'s, or one named in a wrapped error's message.

    safetensors reports "No space left on device (os error 28)"; numpy's ``tofile`` a short write
    ("12288 requested and 10640 written") with no number, which only a full disk or quota causes.
    """
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    found = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", text)
    if found:
        return int(found.group(1) or found.group(2))
    if re.search(r"\d+ requested and \d+ written", text):
        return errno.ENOSPC
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        if os.strerror(number) in text:
            return number
    return None


def storage_error(exc: BaseException, path, doing: str, remedy: str | None = None,
                  full_remedy: str | None = None) -> StorageError | None:
    """``exc`` as a :class:`StorageError` naming ``path`` and what to do, or ``None`` when it is no OS failure.

    ``doing`` completes "cannot ..." (``"write DST"``); ``remedy`` overrides the usual advice, and
    ``full_remedy`` the advice for a full disk (default: ``remedy``).
    """
    number = os_errno(exc)
    if number is None and not isinstance(exc, OSError):
        return None
    no_space = number in _NO_SPACE
    if no_space:
        free = _free_bytes(Path(path))
        reason = "no space left on the device" + (f" ({human_bytes(free)} free)" if free is not None else "")
        remedy = full_remedy or remedy or "free some space, or write it to another disk"
    else:
        reason = _REASONS.get(number) or (os.strerror(number) if number else str(exc))
        remedy = remedy or "choose a writable location"
    return StorageError(f"cannot {doing} {path}: {reason}; {remedy}", path=path, no_space=no_space)


@contextlib.contextmanager
def guard(path, doing: str, remedy: str | None = None, full_remedy: str | None = None) -> Iterator[None]:
    """Raise OS failures inside the block as :class:`StorageError` (see :func:`storage_error`); others pass."""
    try:
        yield
    except AdaptrixError:
        raise
    except Exception as exc:
        err = storage_error(exc, path, doing, remedy, full_remedy)
        if err is None:
            raise
        raise err from exc


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


# -- temporaries beside an output ----------------------------------------------------------------------------------


def _prefix(dst: Path) -> str:
    return f".{dst.name[:_NAME_MAX]}.{HOST}-{os.getpid()}-"


def _umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux), since setting it to
    read it back would briefly give files made by other threads meanwhile (a server's) the wrong mode."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _discard(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


@contextlib.contextmanager
def atomic_file(dst: str | os.PathLike, *, doing: str = "write", remedy: str | None = None,
                full_remedy: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dst`` to write; on success it replaces ``dst`` (a plain file, umask mode).

    On any failure the temporary is removed and ``dst`` is as it was; OS failures become :class:`StorageError`.
    """
    dst = Path(dst)
    with guard(dst, doing, remedy, full_remedy):
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_prefix(dst), suffix=".tmp", dir=dst.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with guard(dst, doing, remedy, full_remedy):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            _discard(tmp)


@contextlib.contextmanager
def _temp_folder(dst: Path, doing: str, remedy: str | None, full_remedy: str | None) -> Iterator[Path]:
    with guard(dst, doing, remedy, full_remedy):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(dst), suffix=".tmp", dir=dst.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    finally:
        if tmp.exists():
            _discard(tmp)


@contextlib.contextmanager
def new_folder(dst: str | os.PathLike, *, doing: str = "write", remedy: str | None = None,
               full_remedy: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst`` to fill; on success it is renamed to ``dst``.

    For outputs keyed by content (caches): when ``dst`` already exists (a concurrent writer won), it is kept
    and the new copy dropped. The caller removes a ``dst`` it found damaged before the block ends.
    """
    dst = Path(dst)
    with _temp_folder(dst, doing, remedy, full_remedy) as tmp:
        with guard(dst, doing, remedy, full_remedy):
            yield tmp
            try:
                os.rename(tmp, dst)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not dst.is_dir():
                    raise


@contextlib.contextmanager
def replace_folder(dst: str | os.PathLike, *, doing: str = "write", remedy: str | None = None,
                   full_remedy: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst`` to fill; on success it takes ``dst``'s place whole.

    Only for folders adaptrix owns whole (a training checkpoint): the old ``dst`` is renamed to a temporary
    name, the new one renamed in, and the old one deleted.
    """
    dst = Path(dst)
    with _temp_folder(dst, doing, remedy, full_remedy) as tmp:
        with guard(dst, doing, remedy, full_remedy):
            yield tmp
            if not dst.exists():
                os.rename(tmp, dst)
                return
            old = Path(tempfile.mkdtemp(prefix=_prefix(dst), suffix=".tmp", dir=dst.parent))
            os.rmdir(old)  # a unique name to move the old folder to
            os.rename(dst, old)
            os.rename(tmp, dst)
            _discard(old)


@contextlib.contextmanager
def replace_files(
    dst: str | os.PathLike,
    *,
    last: str | None = None,
    remove: Iterable[str] = (),
    add_only: Iterable[str] = (),
    doing: str = "write",
    remedy: str | None = None,
    full_remedy: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst`` to fill with files; on success they land in ``dst``.

    A new ``dst`` is the renamed temporary folder. In an existing ``dst`` only the names written are
    replaced, each by an atomic rename: ``last`` is removed first and moved in after the rest (the folder
    never looks complete while it mixes old and new files), ``remove`` names (the old output's other files)
    are deleted when not written again, and ``add_only`` names (a generated ``README.md``) are moved in only
    where ``dst`` has none. Nothing else in ``dst`` is touched.
    """
    dst = Path(dst)
    remove, add_only = set(remove), set(add_only)
    with _temp_folder(dst, doing, remedy, full_remedy) as tmp:
        with guard(dst, doing, remedy, full_remedy):
            yield tmp
            if not dst.exists():
                try:
                    os.rename(tmp, dst)
                    return
                except FileExistsError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
            written = sorted(p.name for p in tmp.iterdir())
            for name in written:
                if (tmp / name).is_dir() and not (tmp / name).is_symlink() and (dst / name).exists():
                    raise StorageError(
                        f"cannot {doing} {dst}: it already holds {name}/, which adaptrix does not replace; "
                        "choose another path or remove it first",
                        path=dst,
                    )
            order = [n for n in written if n != last] + ([last] if last in written else [])
            if last is not None:
                with contextlib.suppress(FileNotFoundError):
                    (dst / last).unlink()
            for name in sorted(remove - set(written)):
                with contextlib.suppress(FileNotFoundError):
                    (dst / name).unlink()
            for name in order:
                if name in add_only and (dst / name).exists():
                    continue
                os.replace(tmp / name, dst / name)


def overlap(inputs: Iterable[str | os.PathLike], outputs: Iterable[str | os.PathLike]) -> tuple[Path, Path] | None:
    """``(input, output)`` for the first output that is an input file or a folder holding one; else None.

    ``inputs`` are the files a job reads, ``outputs`` the paths it replaces or deletes. Paths are compared
    resolved (symbolic links followed) and by identity (hard links).
    """
    ins = [Path(p).expanduser() for p in inputs]
    for out in outputs:
        out = Path(out).expanduser()
        o = out.resolve()
        for src in ins:
            s = src.resolve()
            if o == s or o in s.parents or _same_file(src, out):
                return src, out
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# -- stale temporaries ---------------------------------------------------------------------------------------------


def remove_stale(folder: str | os.PathLike, *, name: str | None = None, now: float | None = None) -> list[Path]:
    """Delete adaptrix temporaries in ``folder`` whose writer is gone; return what was removed.

    A temporary is stale when the process named in it is dead on this host, or when nothing in it was
    written for :data:`STALE_TMP_SECONDS` (names without a pid, other hosts, reused pids). ``name``
    limits this to the temporaries of one output (beside a user's DST); the cache passes none.
    Failures to delete (a read-only folder) are ignored.
    """
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        items = list(Path(folder).iterdir())
    except OSError:
        return removed
    for item in items:
        pid, host = _writer(item.name, name)
        if pid is False:
            continue
        try:
            age = now - _last_write(item)
        except OSError:
            continue
        dead = pid is not None and host in (None, HOST) and not _alive(pid)
        if dead or age > STALE_TMP_SECONDS:
            _discard(item)
            if not item.exists():
                removed.append(item)
    return removed


def _writer(filename: str, name: str | None):
    """``(pid or None, host or None)`` of an adaptrix temporary's writer; ``(False, None)`` for anything else."""
    m = _OURS.match(filename)
    if m:
        if name is not None and m["name"] != name[:_NAME_MAX]:
            return False, None
        return int(m["pid"]), m["host"]
    m = _LEGACY.match(filename)
    if m:
        return (None, None) if name is None or m["name"] == name else (False, None)
    m = _LEGACY_GGUF.match(filename)
    if m and name is None:
        return (int(m["pid"]) if m["pid"] else None), None
    return False, None


def _last_write(path: Path) -> float:
    """The newest modification time of ``path`` and, for a folder, of everything in it."""
    newest = path.stat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for entry in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(root, entry), follow_symlinks=False).st_mtime)
    return newest


def _alive(pid: int) -> bool:
    """Is process ``pid`` running here? Unknown answers count as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
