"""GGUF model sources as users name them in llama.cpp, Ollama and LM Studio.

Accepted forms:

- ``path/to/model.gguf``: a local file (an existing path always wins).
- ``owner/repo-GGUF:Q4_K_M``: a quantization tag, case-insensitive, matched as
  a whole dash- or dot-separated part of the file name (``Q4_K`` does not
  match ``Q4_K_M``). None or several matches are an error listing the files.
- ``owner/repo-GGUF/file.gguf`` or ``owner/repo-GGUF:file.gguf``: one file
  (it may sit in a folder of the repo: ``owner/repo/sub/file.gguf``).
- ``owner/repo-GGUF``: the repo's only model file, else its ``Q4_K_M`` file
  (llama.cpp's ``-hf`` default), else an error listing the files.

Hub files are fetched with ``huggingface_hub`` (``list_repo_files``,
``hf_hub_download``) into its own cache; with ``HF_HUB_OFFLINE=1`` or no
network they resolve from that cache. Split models
(``name-00001-of-00003.gguf``) download every part and resolve to the first,
which llama.cpp loads with its siblings. Vision projectors (``mmproj*``) are
never picked as the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from adaptrix.errors import ModelConfigError, ModelLoadError

#: Quantization picked when a repo holds several model files and the source names none.
DEFAULT_QUANT = "Q4_K_M"
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@attrs.frozen
class GGUFSpec:
    """A parsed source, before any file system or network access beyond ``exists()``."""

    text: str
    #: Set for a local file; the Hub fields are then None.
    local_path: Path | None = None
    repo_id: str | None = None
    #: The file inside the repo, when the source names one.
    filename: str | None = None
    #: The quantization tag, when the source gives one (``"Q4_K_M"``).
    quant: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


@attrs.frozen
class ResolvedGGUF:
    """Where a GGUF source's model file is on disk."""

    spec: GGUFSpec
    #: The file to load (the first part of a split model).
    path: Path
    #: Every file of the model (several for a split model).
    parts: tuple[Path, ...]
    repo_id: str | None = None
    filename: str | None = None


def parse_gguf_source(text: str) -> GGUFSpec | None:
    """The source as a GGUF spec, or None when ``text`` does not name a GGUF model.

    Cheap and offline: backends use it to decide whether a source is a GGUF one.
    A ``owner/repo`` without ``GGUF`` in its name, a tag or a file is not one
    (it is a transformers model id).
    """
    text = str(text).strip()
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf" and (path.is_file() or text.startswith(("/", "./", "../", "~"))):
        return GGUFSpec(text, local_path=path)
    if path.is_file():
        return None  # an existing file that is not .gguf
    repo, sep, tail = text.partition(":")
    parts = repo.split("/")
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts):
        return None
    repo_id, inner = "/".join(parts[:2]), "/".join(parts[2:])
    if inner and not inner.lower().endswith(".gguf"):
        return None  # owner/repo/sub/folder: not a GGUF file
    if sep and inner:
        return None  # both a path and a tag: ambiguous, not a form users write
    if sep:
        if not tail:
            return None
        if tail.lower().endswith(".gguf"):
            return GGUFSpec(text, repo_id=repo_id, filename=tail)
        return GGUFSpec(text, repo_id=repo_id, quant=tail)
    if inner:
        return GGUFSpec(text, repo_id=repo_id, filename=inner)
    if "gguf" in repo_id.lower():
        return GGUFSpec(text, repo_id=repo_id)
    return None


def is_gguf_source(text: str) -> bool:
    """True when ``text`` names a GGUF model (a local ``.gguf`` or a GGUF Hub source)."""
    return parse_gguf_source(text) is not None


def resolve_gguf_source(text: str, *, revision: str | None = None) -> ResolvedGGUF:
    """Find (downloading when needed) the model file a GGUF source names.

    Errors say what was asked, what exists and what to do: a missing local
    file, a repo that does not exist, a tag that matches no file or several,
    a file not in the offline cache.
    """
    spec = parse_gguf_source(text)
    if spec is None:
        raise ModelConfigError(
            f"{text!r} is not a GGUF source: pass a local .gguf file, owner/repo-GGUF:QUANT "
            "(e.g. :Q4_K_M) or owner/repo-GGUF/file.gguf"
        )
    if spec.is_local:
        path = spec.local_path
        if not path.is_file():
            raise ModelConfigError(f"GGUF file {path} does not exist: check the path")
        return ResolvedGGUF(spec, path.resolve(), (path.resolve(),))
    files, online = _repo_files(spec.repo_id, revision)
    wanted = _choose(spec, files)
    paths = tuple(_download(spec.repo_id, name, revision, local_only=not online) for name in wanted)
    return ResolvedGGUF(spec, paths[0], paths, repo_id=spec.repo_id, filename=wanted[0])


def _choose(spec: GGUFSpec, files: list[str]) -> list[str]:
    """The repo files the spec names: one file, or every part of one split model."""
    models = [f for f in files if f.lower().endswith(".gguf") and not Path(f).name.lower().startswith("mmproj")]
    listing = ", ".join(models) if models else "(no .gguf files)"
    if spec.filename is not None:
        if spec.filename in files:
            return _with_parts(spec.filename, models)
        raise ModelConfigError(f"{spec.repo_id} has no file {spec.filename!r}; its GGUF files: {listing}")
    tag = spec.quant or DEFAULT_QUANT
    groups = _groups(f for f in models if _has_tag(f, tag))
    if spec.quant is None and len(_groups(models)) == 1:
        groups = _groups(models)  # the repo's only model
    if len(groups) == 1:
        return next(iter(groups.values()))
    if not groups:
        what = f"quantization {spec.quant!r}" if spec.quant else f"a single model file nor a {DEFAULT_QUANT} file"
        raise ModelConfigError(
            f"{spec.repo_id} has no {what}; its GGUF files: {listing}. "
            f"Name one: {spec.repo_id}:<QUANT> or {spec.repo_id}/<file>.gguf"
        )
    raise ModelConfigError(
        f"{spec.repo_id}: quantization {tag!r} matches several files ({', '.join(sorted(groups))}); "
        f"name the file: {spec.repo_id}/<file>.gguf"
    )


def _has_tag(filename: str, tag: str) -> bool:
    stem = Path(_model_key(filename)).name
    return re.search(rf"(?:^|[-.]){re.escape(tag)}(?:$|[-.])", stem, flags=re.IGNORECASE) is not None


def _model_key(filename: str) -> str:
    """The file name without ``.gguf`` and without a split suffix: the parts of one model share it."""
    return _SPLIT.sub("", filename[: -len(".gguf")])


def _groups(files) -> dict[str, list[str]]:
    """Files grouped by model (a split model's parts in one group, in order)."""
    out: dict[str, list[str]] = {}
    for f in files:
        out.setdefault(_model_key(f), []).append(f)
    return {k: sorted(v) for k, v in out.items()}


def _with_parts(filename: str, models: list[str]) -> list[str]:
    """``filename`` and, for a split model, its sibling parts."""
    if not _SPLIT.search(filename[: -len(".gguf")]):
        return [filename]
    return _groups(m for m in models if _model_key(m) == _model_key(filename))[_model_key(filename)]


def _repo_files(repo_id: str, revision: str | None) -> tuple[list[str], bool]:
    """The repo's file list, and whether the Hub answered (else it comes from the local cache)."""
    from huggingface_hub import constants, list_repo_files
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if not constants.HF_HUB_OFFLINE:
        try:
            return list_repo_files(repo_id, revision=revision), True
        except GatedRepoError as exc:
            raise ModelLoadError(
                f"{repo_id} is gated on the Hugging Face Hub: accept its licence on the model page and log in "
                "(hf auth login)"
            ) from exc
        except RepositoryNotFoundError as exc:
            raise ModelConfigError(
                f"no model repo {repo_id!r} on the Hugging Face Hub (or it is private: log in with hf auth login)"
            ) from exc
        except RevisionNotFoundError as exc:
            raise ModelConfigError(f"{repo_id} has no revision {revision!r}") from exc
        except Exception as exc:  # no network: fall back on the cache, and say so if that fails too
            return _cached_files(repo_id, revision, reason=f"the Hub is unreachable ({type(exc).__name__})"), False
    return _cached_files(repo_id, revision, reason="HF_HUB_OFFLINE=1"), False


def _cached_files(repo_id: str, revision: str | None, *, reason: str) -> list[str]:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}: "
            "connect once (unset HF_HUB_OFFLINE) to download it, or pass a local .gguf file"
        ) from exc
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _download(repo_id: str, filename: str, revision: str | None, *, local_only: bool) -> Path:
    """The file's path in the HF cache, downloaded when needed (``local_only``: the Hub did not answer
    the listing, so do not wait for it again)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id}/{filename} is not in the local Hugging Face cache and cannot be downloaded now ({exc}); "
            "connect once (unset HF_HUB_OFFLINE) or pass a local .gguf file"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(
            f"downloading {repo_id}/{filename} failed ({type(exc).__name__}: {exc}); try again"
        ) from exc
