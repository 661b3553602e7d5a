"""The GGUF -> safetensors cache: keyed by content, reused, atomic. A fake converter stands in
for transformers here (the real conversion runs once, in the SmolLM2 fixture)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from adaptrix.errors import ModelLoadError
from adaptrix.models import gguf_cache
from adaptrix.storage.files import STALE_TMP_SECONDS
from support.gguf import FakeConverter, write_gguf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ADAPTRIX_CACHE", str(root))
    return root


def test_cache_root_env(cache, monkeypatch):
    assert gguf_cache.gguf_root() == cache / "gguf"
    monkeypatch.delenv("ADAPTRIX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/y")
    assert gguf_cache.cache_root() == gguf_cache.Path("/x/y/adaptrix")


def test_convert_once_then_reuse(cache, tmp_path, monkeypatch):
    f = write_gguf(tmp_path / "m.gguf", payload=b"weights" * 1000)
    conv = FakeConverter()
    first = gguf_cache.cached_folder(f, progress=False, converter=conv)
    assert first.converted and conv.calls == 1
    assert first.folder == cache / "gguf" / first.sha256
    assert gguf_cache.is_complete(first.folder)
    meta = json.loads((first.folder / gguf_cache.MARKER).read_text())
    assert meta["sha256"] == first.sha256 and meta["source"] == str(f.resolve())

    # the second load neither converts nor re-hashes (size+mtime index)
    monkeypatch.setattr(gguf_cache, "file_sha256", lambda *a, **k: pytest.fail("re-hashed an unchanged file"))
    second = gguf_cache.cached_folder(f, progress=False, converter=conv)
    assert (second.folder, second.converted, conv.calls) == (first.folder, False, 1)


def test_keyed_by_content(cache, tmp_path):
    a = write_gguf(tmp_path / "a.gguf", payload=b"same")
    b = tmp_path / "copy.gguf"
    shutil.copy(a, b)
    conv = FakeConverter()
    assert gguf_cache.cached_folder(a, progress=False, converter=conv).folder == \
        gguf_cache.cached_folder(b, progress=False, converter=conv).folder
    assert conv.calls == 1
    write_gguf(a, payload=b"changed")  # new content at the same path: new hash, new folder
    os.utime(a, ns=(1, 1))
    third = gguf_cache.cached_folder(a, progress=False, converter=conv)
    assert third.converted and conv.calls == 2


def test_crash_leaves_nothing_half_written(cache, tmp_path):
    f = write_gguf(tmp_path / "m.gguf")
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.cached_folder(f, progress=False, converter=FakeConverter(fail=True))
    leftovers = [p.name for p in (cache / "gguf").iterdir() if p.is_dir()]
    assert leftovers == []
    ok = gguf_cache.cached_folder(f, progress=False, converter=FakeConverter())
    assert ok.converted and gguf_cache.is_complete(ok.folder)


def test_incomplete_folder_is_redone(cache, tmp_path):
    f = write_gguf(tmp_path / "m.gguf")
    digest = gguf_cache.file_sha256(f, progress=False)
    stale = cache / "gguf" / digest
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # no marker: not trusted
    conv = FakeConverter()
    r = gguf_cache.cached_folder(f, progress=False, converter=conv)
    assert r.converted and conv.calls == 1 and gguf_cache.is_complete(r.folder)


def test_damaged_index_is_rebuilt(cache, tmp_path):
    f = write_gguf(tmp_path / "m.gguf")
    conv = FakeConverter()
    gguf_cache.cached_folder(f, progress=False, converter=conv)
    (cache / "gguf" / "index.json").write_text("{not json")
    r = gguf_cache.cached_folder(f, progress=False, converter=conv)
    assert not r.converted and conv.calls == 1


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-5]), "truncated"),
        (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 12), "model.safetensors"),
        (lambda d: (d / "config.json").write_text("{garbage"), "config.json"),
        (lambda d: (d / gguf_cache.MARKER).unlink(), "unfinished"),
    ],
    ids=["truncated-weights", "missing-weights", "garbage-weights", "garbage-config", "no-marker"],
)
def test_damaged_folder_is_reconverted(cache, tmp_path, damage, problem):
    f = write_gguf(tmp_path / "m.gguf")
    conv = FakeConverter()
    first = gguf_cache.cached_folder(f, progress=False, converter=conv)
    damage(first.folder)
    with pytest.warns(gguf_cache.CacheWarning, match=problem) as record:
        again = gguf_cache.cached_folder(f, progress=False, converter=conv)
    assert str(first.folder) in str(record[0].message)
    assert again.converted and conv.calls == 2 and again.folder == first.folder
    assert gguf_cache.damage(again.folder) is None


def test_stale_tmp_folders_are_removed(cache, tmp_path):
    import subprocess
    import sys
    import time

    f = write_gguf(tmp_path / "m.gguf")
    root = cache / "gguf"
    root.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    killed = root / f".tmp-0123456789ab-{dead}-abc123"  # its process is gone: a killed conversion
    running = root / f".tmp-0123456789ab-{os.getpid()}-def456"  # a live conversion: left alone
    old = root / ".tmp-0123456789ab-xyz789"  # an older name without a pid, hours old
    for d in (killed, running, old):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 100)
    for p in (old / "model.safetensors", old):  # nothing written in it for hours
        os.utime(p, (time.time() - 2 * STALE_TMP_SECONDS,) * 2)
    gguf_cache.cached_folder(f, progress=False, converter=FakeConverter())
    left = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))
    assert left == [running.name]


def test_index_values_must_be_digests(cache, tmp_path):
    f = write_gguf(tmp_path / "m.gguf")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    root = cache / "gguf"
    root.mkdir(parents=True)
    rel = os.path.relpath(victim, root)
    (root / "index.json").write_text(json.dumps({gguf_cache._stat_key(f): rel}))
    r = gguf_cache.cached_folder(f, progress=False, converter=FakeConverter())
    assert r.folder.parent == root and len(r.sha256) == 64 and r.sha256 == gguf_cache.file_sha256(f, False)
    assert (victim / "keep.txt").read_text() == "precious" and sorted(os.listdir(victim)) == ["keep.txt"]
    assert json.loads((root / "index.json").read_text())[gguf_cache._stat_key(f)] == r.sha256


def test_bad_files(cache, tmp_path):
    garbage = tmp_path / "g.gguf"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"g\.gguf is not a GGUF file.*re-download"):
        gguf_cache.cached_folder(garbage, progress=False, converter=FakeConverter())
    with pytest.raises(Exception, match="does not exist"):
        gguf_cache.cached_folder(tmp_path / "missing.gguf", progress=False, converter=FakeConverter())


def test_engine_loads_through_the_cache(cache, tmp_path, tiny_model, monkeypatch):
    """A .gguf model id goes through the cache and loads the converted folder."""
    from adaptrix import Engine

    f = write_gguf(tmp_path / "tiny.gguf")
    conv = FakeConverter(source=tiny_model("llama"))
    monkeypatch.setattr(gguf_cache, "convert_with_transformers", conv)
    e1 = Engine(str(f), progress=False, backend="transformers")
    e1.initialize()
    info = e1.get_model_info()
    assert info["gguf_file"] == str(f) and info["source"].startswith(str(cache))
    text = e1.generate("Hi", temperature=0, max_new_tokens=4)
    e1.cleanup()
    e2 = Engine(str(f), progress=False, backend="transformers")
    e2.initialize()
    assert e2.generate("Hi", temperature=0, max_new_tokens=4) == text
    e2.cleanup()
    assert conv.calls == 1
