"""GGUF sources: local files and Hub repos, resolved offline from a stand-in Hugging Face cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrix.errors import ModelConfigError, ModelLoadError
from adaptrix.models import gguf_hub as hub

REPO = "someone/SmolLM2-135M-Instruct-GGUF"
SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": "model",
    "SmolLM2-135M-Instruct-Q4_K_M.gguf": "model",
    "SmolLM2-135M-Instruct-Q4_K_S.gguf": b"k_s",
    "big-Q2_K-00001-of-00002.gguf": b"part1",
    "big-Q2_K-00002-of-00002.gguf": b"part2",
    "mmproj-SmolLM2-Q4_K_M.gguf": b"projector",
    "README.md": b"# readme",
}


def _lay_out_cache(cache: Path, repo_id: str, files: dict, embedded_gguf: Path) -> None:
    """A Hugging Face hub cache as huggingface_hub writes it: blobs, refs/main, snapshots/<sha> symlinks."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(SHA)
    for i, (name, content) in enumerate(files.items()):
        blob = repo_dir / "blobs" / f"{i:040x}"
        blob.parent.mkdir(exist_ok=True)
        if content == "model":
            blob.symlink_to(embedded_gguf)
        else:
            blob.write_bytes(content)
        link = repo_dir / "snapshots" / SHA / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, embedded_gguf):
    from huggingface_hub import constants

    _lay_out_cache(tmp_path, REPO, FILES, embedded_gguf)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def _snapshot(cache: Path, name: str) -> Path:
    return cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / SHA / name


@pytest.mark.parametrize(
    "source, filename",
    [
        (f"{REPO}:Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        (f"{REPO}:q4_k_m", "SmolLM2-135M-Instruct-Q4_K_M.gguf"),  # tags are case-insensitive
        (f"{REPO}/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        (f"{REPO}:SmolLM2-135M-Instruct-Q4_K_S.gguf", "SmolLM2-135M-Instruct-Q4_K_S.gguf"),
        (REPO, "SmolLM2-135M-Instruct-Q4_K_M.gguf"),  # several files, no tag: llama.cpp's default Q4_K_M
    ],
)
def test_hub_sources_resolve_offline_from_the_hf_cache(offline_cache, embedded_gguf, source, filename):
    got = hub.resolve_gguf_source(source)
    assert got.repo_id == REPO and got.filename == filename
    assert got.path == _snapshot(offline_cache, filename)
    assert got.parts == (got.path,)
    if filename in ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct-Q4_K_M.gguf"):
        assert got.path.read_bytes()[:4] == b"GGUF" and got.path.stat().st_size == embedded_gguf.stat().st_size


def test_a_split_model_resolves_to_its_first_part_with_every_part_present(offline_cache):
    got = hub.resolve_gguf_source(f"{REPO}:Q2_K")
    assert got.filename == "big-Q2_K-00001-of-00002.gguf"
    assert [p.read_bytes() for p in got.parts] == [b"part1", b"part2"]


def test_a_tag_matching_nothing_lists_the_files(offline_cache):
    # Q4_K is a prefix of Q4_K_M and Q4_K_S but names neither; the projector is never a model.
    with pytest.raises(ModelConfigError, match=r"no quantization 'Q4_K'.*SmolLM2-135M-Instruct-Q4_K_M\.gguf") as info:
        hub.resolve_gguf_source(f"{REPO}:Q4_K")
    assert "README" not in str(info.value)


def test_a_tag_matching_several_files_asks_for_the_file(offline_cache, embedded_gguf, tmp_path, monkeypatch):
    from huggingface_hub import constants

    other = tmp_path / "other"
    repo = "someone/Two-GGUF"
    _lay_out_cache(other, repo, {"a-Q8_0.gguf": "model", "b-Q8_0.gguf": "model"}, embedded_gguf)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(other))
    with pytest.raises(ModelConfigError, match=r"matches several files \(a-Q8_0, b-Q8_0\); name the file"):
        hub.resolve_gguf_source(f"{repo}:Q8_0")
    with pytest.raises(ModelConfigError, match="nor a Q4_K_M file"):
        hub.resolve_gguf_source(repo)


def test_a_missing_file_and_a_repo_not_cached_are_clear_errors(offline_cache):
    with pytest.raises(ModelConfigError, match=r"has no file 'nope\.gguf'; its GGUF files: .*Q4_1\.gguf"):
        hub.resolve_gguf_source(f"{REPO}/nope.gguf")
    with pytest.raises(ModelLoadError, match=r"not in the local Hugging Face cache .*HF_HUB_OFFLINE=1"):
        hub.resolve_gguf_source("nobody/Missing-GGUF:Q4_0")


def test_online_the_hub_listing_and_download_are_used(offline_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo, revision=None: calls.append(repo) or [*FILES])

    def download(repo, filename, revision=None, local_files_only=False):
        calls.append((repo, filename, revision, local_files_only))
        return str(_snapshot(offline_cache, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    got = hub.resolve_gguf_source(f"{REPO}:Q4_K_M", revision="v1")
    assert calls == [REPO, (REPO, "SmolLM2-135M-Instruct-Q4_K_M.gguf", "v1", False)]
    assert got.path == _snapshot(offline_cache, "SmolLM2-135M-Instruct-Q4_K_M.gguf")


def test_an_unreachable_hub_falls_back_on_the_cache_without_waiting_again(offline_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    def no_network(repo, revision=None):
        raise ConnectionError("Name or service not known")

    real_download, cache_only = huggingface_hub.hf_hub_download, []

    def download(*args, local_files_only=False, **kwargs):
        cache_only.append(local_files_only)
        return real_download(*args, local_files_only=local_files_only, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    got = hub.resolve_gguf_source(f"{REPO}:Q4_1")
    assert cache_only == [True]  # no second wait on the network (huggingface_hub retries for ~25 s)
    assert got.path == _snapshot(offline_cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(ModelLoadError, match=r"the Hub is unreachable \(ConnectionError\)"):
        hub.resolve_gguf_source("nobody/Missing-GGUF:Q4_0")


def test_local_files(embedded_gguf, tmp_path):
    got = hub.resolve_gguf_source(str(embedded_gguf))
    assert got.path == embedded_gguf.resolve() and got.repo_id is None
    with pytest.raises(ModelConfigError, match=r"nope\.gguf does not exist"):
        hub.resolve_gguf_source(str(tmp_path / "nope.gguf"))


@pytest.mark.parametrize(
    "text, gguf",
    [
        ("Qwen/Qwen3-0.6B", False),  # a transformers model id
        ("bartowski/Qwen3-0.6B-GGUF", True),
        ("Qwen/Qwen3-0.6B:Q4_K_M", True),
        ("Qwen/Qwen3-0.6B/model.gguf", True),
        ("Qwen/Qwen3-0.6B/sub/folder", False),
        ("just-a-name", False),
        ("./missing.gguf", True),  # a local path (it will fail to resolve, as a missing file)
    ],
)
def test_which_sources_are_gguf_sources(text, gguf):
    assert hub.is_gguf_source(text) is gguf


def test_not_a_gguf_source_is_refused():
    with pytest.raises(ModelConfigError, match="not a GGUF source"):
        hub.resolve_gguf_source("Qwen/Qwen3-0.6B")


def test_environment_variables_reach_huggingface_hub_in_a_fresh_process(tmp_path, embedded_gguf):
    """The real configuration path: HF_HUB_CACHE and HF_HUB_OFFLINE set before huggingface_hub is imported."""
    _lay_out_cache(tmp_path, REPO, FILES, embedded_gguf)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = (
        "import sys; from adaptrix.models.gguf_hub import resolve_gguf_source as r;"
        f"print(r('{REPO}:Q4_1').path); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    path, imported = out.strip().splitlines()
    assert Path(path) == _snapshot(tmp_path, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert imported == "[]"


def test_a_hub_gguf_source_runs_through_the_engine(tmp_path, embedded_gguf):
    """`adaptrix generate --model owner/repo-GGUF:Q4_1`: resolved once by the core, downloaded into the HF cache
    (here a stand-in, offline), run on the backend auto picks, in a fresh process as a user runs it."""
    pytest.importorskip("llama_cpp")
    _lay_out_cache(tmp_path, REPO, FILES, embedded_gguf)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    info = subprocess.run(
        [sys.executable, "-m", "adaptrix", "info", "--model", f"{REPO}:Q4_1", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert info.returncode == 0, info.stderr[-2000:]
    import json

    data = json.loads(info.stdout)
    assert data["gguf_file"] == str(_snapshot(tmp_path, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert (data["family"], data["backend"], data["model_id"]) == ("llama", "llamacpp", f"{REPO}:Q4_1")
    bad = subprocess.run(
        [sys.executable, "-m", "adaptrix", "generate", "--model", f"{REPO}:Q9_X", "Hi"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "Q9_X" in bad.stderr and "Traceback" not in bad.stderr
