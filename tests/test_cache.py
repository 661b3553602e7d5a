"""adaptrix's caches (issue 15, item 10): the registry plugins add to, the LoRA cache's LRU budget, ``adaptrix cache``,
and the temporaries a ``kill -9`` leaves, removed by the next writer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptrix.cli.main import main
from adaptrix.errors import PluginError, StorageError
from adaptrix.plugins.host import PluginHost
from adaptrix.storage import caches
from adaptrix.storage.files import STALE_TMP_SECONDS
from support.gguf import FakeConverter, write_gguf

REPO = Path(__file__).resolve().parents[1]
PIRATE = REPO / "examples" / "adapters" / "pirate_style"


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTRIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADAPTRIX_LORA_CACHE_SIZE", raising=False)
    return tmp_path / "cache"


def variant(tmp_path: Path, i: int) -> Path:
    """A copy of pirate_style whose config differs: another cache key, the same converted size."""
    folder = tmp_path / f"ad{i}"
    shutil.copytree(PIRATE, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["revision"] = f"variant-{i}"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# -- the registry --------------------------------------------------------------------------------------------------


def test_plugins_add_cache_kinds_through_the_hook():
    pytest.importorskip("adaptrix_llamacpp")
    host = PluginHost(environ={**os.environ, "ADAPTRIX_LOAD_PLUGINS": "llamacpp"})
    host.load_entry_points()
    answers = host.call_all("caches")
    assert [(plugin, [k.name for k in kinds]) for plugin, kinds in answers] == [("llamacpp", ["lora"])]
    kinds = caches.cache_kinds(host)
    assert list(kinds) == ["gguf", "imported", "eval", "lora"]
    assert kinds["lora"].budget_env == "ADAPTRIX_LORA_CACHE_SIZE" and kinds["lora"].default_budget == 2 << 30

    class Bad:
        from adaptrix import hookimpl

        @hookimpl
        def caches(self):
            return ["lora"]

    host.register(Bad(), "bad")
    with pytest.raises(PluginError, match="plugin 'bad' returned .* from caches"):
        caches.cache_kinds(host)


@pytest.mark.parametrize("text, expected", [("2G", 2 << 30), ("500M", 500 << 20), ("1.5GiB", 3 << 29),
                                            ("1048576", 1 << 20), ("none", None), ("0", 0)])
def test_budget_sizes(text, expected):
    assert caches.parse_size(text) == expected


# -- the LoRA cache's budget ---------------------------------------------------------------------------------------


def test_lora_cache_evicts_the_least_recently_used_past_its_budget(root, tmp_path, embedded_gguf, monkeypatch):
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix_llamacpp.lora_cache import cached_lora

    a1, a2, a3 = (variant(tmp_path, i) for i in (1, 2, 3))
    f1 = cached_lora(a1, embedded_gguf, progress=False)
    f2 = cached_lora(a2, embedded_gguf, progress=False)
    size = f1.stat().st_size
    monkeypatch.setenv("ADAPTRIX_LORA_CACHE_SIZE", str(int(2.5 * size)))  # room for two
    age(f1, 60)
    age(f2, 30)
    assert cached_lora(a1, embedded_gguf, progress=False) == f1  # reused: now the most recently used
    f3 = cached_lora(a3, embedded_gguf, progress=False)
    assert sorted(p.name for p in (root / "lora").iterdir()) == sorted([f1.name, f3.name])  # f2 went
    assert sum(p.stat().st_size for p in (root / "lora").iterdir()) <= 2.5 * size

    monkeypatch.setenv("ADAPTRIX_LORA_CACHE_SIZE", "1")  # smaller than one entry: the new one stays
    age(f1, 60)
    age(f3, 60)
    f2 = cached_lora(a2, embedded_gguf, progress=False)
    assert [p.name for p in (root / "lora").iterdir()] == [f2.name]

    monkeypatch.setenv("ADAPTRIX_LORA_CACHE_SIZE", "a lot")
    with pytest.raises(StorageError, match=r"ADAPTRIX_LORA_CACHE_SIZE='a lot' is not a size"):
        cached_lora(a1, embedded_gguf, progress=False)


def test_entries_just_used_are_not_evicted(root, tmp_path):
    kind = caches.CacheKind("t", "t", budget_env="T_BUDGET", default_budget=10)
    folder = caches.cache_dir(kind)
    for name in ("old", "recent", "new"):
        (folder / name).write_bytes(b"x" * 8)
    age(folder / "old", 3600)
    age(folder / "recent", caches.IN_USE_SECONDS / 2)  # another process may be opening it right now
    evicted = caches.enforce_budget(kind, keep=[folder / "new"])
    assert [e.path.name for e in evicted] == ["old"]
    assert sorted(p.name for p in folder.iterdir()) == ["new", "recent"]  # over budget, but in use


# -- adaptrix cache --------------------------------------------------------------------------------------------------


def test_cache_cli_shows_and_clears(root, tmp_path, capsys, embedded_gguf):
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix.models import gguf_cache
    from adaptrix_llamacpp.lora_cache import cached_lora

    gguf_cache.cached_folder(write_gguf(tmp_path / "m.gguf"), progress=False, converter=FakeConverter())
    lora = cached_lora(PIRATE, embedded_gguf, progress=False)
    capsys.readouterr()
    assert main(["cache", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["root"] == str(root)
    kinds = {k["kind"]: k for k in shown["kinds"]}
    counts = {k: v["count"] for k, v in kinds.items()}
    assert counts.pop("ray-adapters", 0) == 0  # the adaptrix-ray plugin's cache, when it is installed
    assert counts == {"gguf": 1, "imported": 0, "eval": 0, "lora": 1}
    assert kinds["lora"]["entries"][0]["name"] == lora.name and kinds["lora"]["total_bytes"] == lora.stat().st_size
    assert kinds["lora"]["budget_bytes"] == 2 << 30 and kinds["gguf"]["budget_bytes"] is None
    assert shown["total_bytes"] == sum(k["total_bytes"] for k in kinds.values())

    assert main(["cache"]) == 0  # show is the default
    text = capsys.readouterr().out
    assert lora.name in text and "lora: 1 entry, 4.7 MB; budget 2.0 GB (default; set ADAPTRIX_LORA_CACHE_SIZE" in text

    assert main(["cache", "clear", "lora"]) == 0
    assert "lora: removed 1 entry, 4.7 MB" in capsys.readouterr().out
    assert not lora.exists() and any((root / "gguf").iterdir())
    assert main(["cache", "clear", "--json"]) == 0
    removed = {d["kind"]: d["removed"] for d in json.loads(capsys.readouterr().out)}
    assert removed.pop("ray-adapters", 0) == 0  # the adaptrix-ray plugin's cache, when it is installed
    assert removed == {"gguf": 1, "imported": 0, "eval": 0, "lora": 0}
    assert main(["cache", "clear", "models"]) == 2
    assert "unknown cache kind(s) models; the kinds are: gguf, imported, eval, lora" in capsys.readouterr().err


# -- kill -9 leftovers ---------------------------------------------------------------------------------------------


def killed_while_writing(code: str, tmp_path: Path) -> None:
    """Run ``code`` in a child that SIGKILLs itself in the middle of its write (set up by ``code``)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_a_killed_lora_conversion_leaves_a_temporary_the_next_one_removes(root, tmp_path, embedded_gguf):
    pytest.importorskip("adaptrix_llamacpp")
    from adaptrix_llamacpp.lora_cache import cached_lora

    killed_while_writing(
        "import os, signal, gguf\n"
        "def die(self, *, progress=False):\n"
        "    self.fout[0].write(b'x' * 100000); self.fout[0].flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "gguf.GGUFWriter.write_tensors_to_file = die\n"
        "from adaptrix_llamacpp.lora_cache import cached_lora\n"
        f"cached_lora({str(PIRATE)!r}, {str(embedded_gguf)!r}, progress=False)\n",
        tmp_path,
    )
    lora = root / "lora"
    [left] = [p.name for p in lora.iterdir()]
    assert left.startswith(".") and left.endswith(".tmp")  # what the issue found: a temporary that stays
    legacy_old = lora / ".abc.gguf.k2j4h5g6.tmp"  # an older adaptrix's name (no pid): the age rule applies
    legacy_new = lora / ".def.gguf.q1w2e3r4.tmp"
    for p in (legacy_old, legacy_new):
        p.write_bytes(b"x")
    age(legacy_old, 2 * STALE_TMP_SECONDS)
    out = cached_lora(variant(tmp_path, 1), embedded_gguf, progress=False)
    assert sorted(p.name for p in lora.iterdir()) == sorted([out.name, legacy_new.name])


def test_a_killed_peft_conversion_leaves_a_folder_the_next_one_removes(tmp_path, embedded_gguf):
    pytest.importorskip("adaptrix_llamacpp")
    lora = tmp_path / "p.gguf"
    assert main(["adapters", "convert", str(PIRATE), str(lora)]) == 0
    killed_while_writing(
        "import os, signal\n"
        "from safetensors import numpy as st\n"
        "def die(tensors, filename, *a, **k):\n"
        "    open(filename, 'wb').write(b'x' * 100000); os.kill(os.getpid(), signal.SIGKILL)\n"
        "st.save_file = die\n"
        "from adaptrix.cli.main import main\n"
        f"main(['adapters', 'convert', {str(lora)!r}, {str(tmp_path / 'peft')!r}])\n",
        tmp_path,
    )
    [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".peft.")]
    assert left.is_dir() and left.name.endswith(".tmp") and not (tmp_path / "peft").exists()
    other = tmp_path / ".other.abcd1234.tmp"  # another output's temporary, hours old: not this DST's to remove
    other.mkdir()
    age(other, 2 * STALE_TMP_SECONDS)
    assert main(["adapters", "convert", str(lora), str(tmp_path / "peft")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [other.name]
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_a_llamacpp_engine_start_sweeps_what_killed_conversions_left(root, embedded_gguf):
    """The issue's leftovers survived restarts: a server that converts nothing new still removes them."""
    pytest.importorskip("adaptrix_llamacpp")
    import subprocess

    from adaptrix import Engine
    from adaptrix.storage.files import HOST

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    (root / "lora").mkdir(parents=True)
    left = root / "lora" / f".{'a' * 64}.gguf.{HOST}-{dead}-abcd1234.tmp"
    left.write_bytes(b"x" * 1000)
    engine = Engine(backend="llamacpp", progress=False, threads=1)
    engine.initialize()
    try:
        assert not left.exists()
    finally:
        engine.cleanup()
