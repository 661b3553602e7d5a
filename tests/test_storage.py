"""I/O failures (issue 15, item 8): a full disk, a read-only destination or cache, ``ADAPTRIX_CACHE`` naming a file,
a DST in /proc. Each is an adaptrix ``StorageError`` naming the path and the remedy (a one-line CLI error, a 507 or
503 from the server), and nothing half-written is left behind. Full disks and read-only file systems are simulated
where the OS reports them (the write that fails), since tests cannot mount file systems."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import pytest

from adaptrix.cli.main import main
from adaptrix.errors import StorageError
from adaptrix.models import gguf_cache
from adaptrix.storage import files as storage
from support.gguf import FakeConverter, write_gguf

REPO = Path(__file__).resolve().parents[1]
MATH = REPO / "examples" / "adapters" / "math_specialist"
PIRATE = REPO / "examples" / "adapters" / "pirate_style"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ADAPTRIX_CACHE", str(root))
    return root


def leftovers(folder: Path) -> list[str]:
    """Hidden names (temporaries) anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


# -- OS failures -> StorageError ---------------------------------------------------------------------------------


class SafetensorError(Exception):
    """What safetensors raises (its own class, not an OSError)."""


@pytest.mark.parametrize(
    "exc, no_space, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True, "no space left on the device"),
        (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), True,
         "no space left on the device"),
        (OSError("12288 requested and 10640 written"), True, "no space left on the device"),  # numpy's short write
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True, "no space left on the device"),
        (OSError(errno.EROFS, "Read-only file system"), False, "the file system is read-only"),
        (PermissionError(errno.EACCES, "Permission denied"), False, "permission denied"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), False, "a part of the path is a file"),
    ],
)
def test_os_failures_become_storage_errors(exc, no_space, reason, tmp_path):
    err = storage.storage_error(exc, tmp_path / "out.gguf", "write DST", "choose another DST")
    assert isinstance(err, StorageError) and err.no_space is no_space
    assert str(err).startswith(f"cannot write DST {tmp_path / 'out.gguf'}: {reason}")
    assert str(err).endswith("choose another DST")
    assert storage.storage_error(ValueError("a bug"), tmp_path, "write") is None  # bugs stay bugs


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dst = tmp_path / "x.gguf"
    dst.write_bytes(b"old")
    with pytest.raises(StorageError, match="no space left") as caught:
        with storage.atomic_file(dst) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.no_space and dst.read_bytes() == b"old" and leftovers(tmp_path) == []


# -- the GGUF cache (transformers backend) ---------------------------------------------------------------------


def test_gguf_cache_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    f = write_gguf(tmp_path / "m.gguf")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0\n")
    monkeypatch.setenv("ADAPTRIX_CACHE", str(passwd))
    with pytest.raises(StorageError, match=r"is a file, not a folder; set ADAPTRIX_CACHE") as caught:
        gguf_cache.cached_folder(f, progress=False, converter=FakeConverter())
    assert str(passwd) in str(caught.value) and not caught.value.no_space
    assert passwd.read_text() == "root:x:0:0\n"


def test_gguf_cache_on_a_full_disk_leaves_nothing_half_written(cache, tmp_path):
    f = write_gguf(tmp_path / "m.gguf")

    def full(path, out_dir, progress):
        FakeConverter()(path, out_dir, progress)  # some files written, then the disk is full
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(StorageError) as caught:
        gguf_cache.cached_folder(f, progress=False, converter=full)
    message = str(caught.value)
    assert caught.value.no_space and "no space left on the device" in message
    assert str(cache / "gguf") in message and "ADAPTRIX_CACHE" in message and "adaptrix cache clear" in message
    assert [p.name for p in (cache / "gguf").iterdir()] == ["index.json"]  # no folder, no temporary
    again = gguf_cache.cached_folder(f, progress=False, converter=FakeConverter())  # space again: it converts
    assert again.converted and gguf_cache.is_complete(again.folder)


def test_a_read_only_gguf_cache_still_serves_what_it_holds(cache, tmp_path, monkeypatch):
    f = write_gguf(tmp_path / "m.gguf")
    first = gguf_cache.cached_folder(f, progress=False, converter=FakeConverter())
    moved = tmp_path / "elsewhere.gguf"  # a path the index does not know: the hash is computed again
    shutil.copy(f, moved)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    again = gguf_cache.cached_folder(moved, progress=False, converter=FakeConverter())
    assert again.folder == first.folder and not again.converted
    other = write_gguf(tmp_path / "other.gguf", name="other")
    with pytest.raises(StorageError, match="the file system is read-only; set ADAPTRIX_CACHE"):
        gguf_cache.cached_folder(other, progress=False, converter=FakeConverter())


# -- the llama.cpp LoRA cache ------------------------------------------------------------------------------------


def _short_write(monkeypatch):
    """numpy's tofile on a full disk: part of the tensors written, then OSError without errno."""
    gguf = pytest.importorskip("gguf")

    def write_tensors_to_file(self, *, progress=False):
        self.fout[0].write(b"\0" * 10640)
        raise OSError("12288 requested and 10640 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", write_tensors_to_file)


def test_lora_cache_on_a_full_disk_leaves_nothing_half_written(cache, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix_llamacpp.lora_cache import cached_lora

    _short_write(monkeypatch)
    with pytest.raises(StorageError) as caught:
        cached_lora(PIRATE, embedded_gguf, progress=False, name="pirate_style")
    message = str(caught.value)
    assert caught.value.no_space and message.startswith("cannot write the GGUF LoRA of adapter 'pirate_style' to ")
    assert str(cache / "lora") in message and "ADAPTRIX_CACHE" in message
    assert list((cache / "lora").iterdir()) == []  # no entry and no temporary


def test_lora_cache_that_is_a_file_is_a_clear_error(tmp_path, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix_llamacpp.lora_cache import cached_lora

    passwd = tmp_path / "passwd"
    passwd.write_text("x")
    monkeypatch.setenv("ADAPTRIX_CACHE", str(passwd))
    with pytest.raises(StorageError, match=rf"the adaptrix cache {passwd} is a file, not a folder"):
        cached_lora(PIRATE, embedded_gguf, progress=False)


# -- the CLI: one line, exit 2 -----------------------------------------------------------------------------------


def one_line_error(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adaptrix: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_convert_to_proc_is_one_clear_line(capsys, embedded_gguf):
    pytest.importorskip("adaptrix_llamacpp")
    err = one_line_error(capsys, "adapters", "convert", PIRATE, "/proc/x.gguf")
    assert "cannot write /proc/x.gguf" in err


def test_convert_to_a_read_only_or_full_destination_is_one_clear_line(capsys, tmp_path, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    lora = tmp_path / "p.gguf"
    assert main(["adapters", "convert", str(PIRATE), str(lora)]) == 0
    real = tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if str(kwargs.get("dir")) == str(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    err = one_line_error(capsys, "adapters", "convert", lora, tmp_path / "ro" / "peft")
    assert f"cannot write DST {tmp_path / 'ro' / 'peft'}: the file system is read-only" in err
    monkeypatch.undo()

    from safetensors import numpy as st_numpy

    def full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(st_numpy, "save_file", full)
    err = one_line_error(capsys, "adapters", "convert", lora, tmp_path / "full")
    assert f"cannot write DST {tmp_path / 'full'}: no space left on the device" in err
    assert not (tmp_path / "full").exists() and leftovers(tmp_path) == []


def test_generate_with_an_unusable_cache_is_one_clear_line(capsys, tmp_path, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    passwd = tmp_path / "passwd"
    passwd.write_text("x")
    monkeypatch.setenv("ADAPTRIX_CACHE", str(passwd))
    err = one_line_error(capsys, "generate", "--backend", "llamacpp", "--threads", "1", "-n", "2", "--adapter",
                         PIRATE, "Hi")
    assert "is a file, not a folder; set ADAPTRIX_CACHE" in err


# -- the server: 507 for a full disk, 503 for an unusable cache, OpenAI-shaped; it keeps serving ---------------------


def test_server_answers_507_and_503_and_keeps_serving(tmp_path, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from adaptrix import Engine
    from adaptrix.serve.app import ServeOptions, create_app
    from support.server import LiveServer

    ads = tmp_path / "adapters"
    shutil.copytree(PIRATE, ads / "pirate")
    shutil.copytree(MATH, ads / "math")
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))

    def make():
        e = Engine(backend="llamacpp", adapters_dir=str(ads), progress=False, threads=1)
        e.initialize()
        return e

    def ask(url, model):
        return httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]})

    with LiveServer(create_app(make, ServeOptions(adapters_dir=str(ads)))) as srv:
        with monkeypatch.context() as m:
            _short_write(m)
            r = ask(srv.url, "pirate")
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "insufficient_storage" and error["type"] == "server_error"
        assert "no space left on the device" in error["message"] and "ADAPTRIX_CACHE" in error["message"]
        assert leftovers(tmp_path / "cache") == []

        passwd = tmp_path / "passwd"
        passwd.write_text("x")
        with monkeypatch.context() as m:
            m.setenv("ADAPTRIX_CACHE", str(passwd))
            r = ask(srv.url, "math")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "cache_unavailable" and "is a file" in r.json()["error"]["message"]

        assert ask(srv.url, "base").status_code == 200  # still serving
        assert ask(srv.url, "pirate").status_code == 200  # and converts once the disk has room


# -- which temporaries are stale -------------------------------------------------------------------------------------


def test_remove_stale_takes_only_temporaries_whose_writer_is_gone(tmp_path):
    import os
    import subprocess
    import sys
    import time

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    here, other = storage.HOST, "0" * 8 if storage.HOST != "0" * 8 else "1" * 8
    names = {
        f".out.{here}-{dead}-abcd1234.tmp": True,  # this host, its process is gone
        f".out.{here}-{os.getpid()}-abcd1234.tmp": False,  # a live writer
        f".out.{other}-{dead}-abcd1234.tmp": False,  # another host's pid means nothing here: age only
        ".out.k2j4h5g6.tmp": False,  # an older adaptrix's name, fresh: age only
        f".other.{here}-{dead}-abcd1234.tmp": False,  # another output's (name= limits the sweep)
        ".out.notes": False,  # not a temporary
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "data").write_bytes(b"x")
    old_other = tmp_path / f".out.{other}-{dead}-zzzz9999.tmp"
    old_other.write_bytes(b"x")
    names[old_other.name] = True
    stale = time.time() - 2 * storage.STALE_TMP_SECONDS
    os.utime(old_other, (stale, stale))
    slow = tmp_path / f".out.{here}-{os.getpid()}-slow0000.tmp"  # a live writer, an old folder, a fresh file in it
    slow.mkdir()
    (slow / "big").write_bytes(b"x")
    os.utime(slow, (stale, stale))
    names[slow.name] = False
    removed = storage.remove_stale(tmp_path, name="out")
    assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)


def test_replace_folder_swaps_whole_and_a_failure_keeps_the_old(tmp_path):
    dst = tmp_path / "checkpoint"
    dst.mkdir()
    (dst / "old").write_text("1")
    with pytest.raises(StorageError, match="no space"):
        with storage.replace_folder(dst) as tmp:
            (tmp / "new").write_text("2")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in dst.iterdir()] == ["old"] and leftovers(tmp_path) == []
    with storage.replace_folder(dst) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in dst.iterdir()] == ["new"] and leftovers(tmp_path) == []
