"""Convert LoRA adapters between PEFT folders and the file formats plugins provide.

The core converts nothing itself: plugins list :class:`AdapterConverter`
objects through the ``adapter_converters`` hook (the llama.cpp distribution
provides ``gguf-lora``, the GGUF LoRA files llama.cpp and Ollama load), and
:func:`convert_adapter` picks one from the paths it is given:

- SRC a PEFT folder (``adapter_config.json``) -> DST a file whose name ends
  with a converter's suffix (``.gguf``): ``from_peft``;
- SRC a file a converter recognises -> DST a PEFT folder: ``to_peft``.

Everything the paths can tell is checked before any work starts (DST already
there without ``overwrite``, SRC not an adapter, no installed converter, DST
that would replace a file SRC is read from); the converter then validates the
adapter against the base model itself.

Writing goes through :mod:`adaptrix.storage.files`: a file is written beside DST and
renamed into place (the converter's ``from_peft`` uses
:func:`~adaptrix.storage.files.atomic_file`), a PEFT folder is written beside DST and
only its adapter files (``adapter_config.json`` last, the weights) replace
those of an existing DST: ``overwrite`` replaces an adapter, never the input
nor anything else in the folder. A failed conversion, a full disk or a killed
process never leaves half an output nor removes the old one; temporaries a
killed conversion left beside DST are removed by the next one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import attrs

from adaptrix.adapters.info import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from adaptrix.errors import AdapterError, AdapterFormatError, AdapterNotFoundError, PluginError
from adaptrix.models.default_model import default_model_path
from adaptrix.storage.caches import IMPORTED, cache_dir, cache_writing, touch
from adaptrix.storage.files import guard, new_folder, overlap, remove_stale, replace_files

if TYPE_CHECKING:  # pragma: no cover
    from adaptrix.types import Hooks

PEFT = "peft"
#: What to do about a format no installed plugin converts: the core knows no format nor plugin by name.
INSTALL_HINT = "install the plugin that provides the format (adaptrix plugins list shows the installed ones)"


@attrs.frozen
class AdapterConverter:
    """One adapter file format a plugin converts to and from PEFT folders.

    ``from_peft(adapter_dir, out_path, *, base, dtype, progress) -> Path``
    writes the format for the base model file ``base``, atomically (through
    :func:`adaptrix.storage.files.atomic_file`); ``to_peft(path, out_dir, *, base,
    progress) -> Path`` writes a PEFT folder into ``out_dir``, a fresh
    temporary folder the core moves into place (``base`` is ``None`` unless
    the user named one). ``recognizes(path) -> bool`` says whether a file
    holds this format (read its magic, not its name). Both converters raise
    adaptrix errors naming the file and what to do.
    """

    #: Format name shown to users, e.g. ``"gguf-lora"``.
    format: str
    #: File name endings of this format, e.g. ``(".gguf",)``.
    suffixes: tuple[str, ...] = attrs.field(converter=tuple)
    from_peft: Callable[..., Path] = attrs.field(eq=False, repr=False)
    to_peft: Callable[..., Path] = attrs.field(eq=False, repr=False)
    recognizes: Callable[[Path], bool] = attrs.field(eq=False, repr=False)
    #: Output dtypes ``from_peft`` takes; the first is the default.
    dtypes: tuple[str, ...] = attrs.field(default=("f32",), converter=tuple)
    #: One line for error messages and listings.
    summary: str = ""
    #: ``is_adapter(path) -> bool``: is this existing file an adapter of this format, which ``--overwrite`` may
    #: replace (a GGUF model is a GGUF file but no GGUF LoRA)? ``None``: ``recognizes`` answers.
    is_adapter: Callable[[Path], bool] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Conversion:
    """What :func:`convert_adapter` did."""

    source: str
    destination: str
    from_format: str
    to_format: str
    #: The base model file the conversion was made against (``None``: none was needed).
    base: str | None
    dtype: str | None
    plugin: str

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def adapter_converters(host: "Hooks") -> dict[str, tuple[str, AdapterConverter]]:
    """``{format: (plugin, converter)}`` from every plugin's ``adapter_converters`` hook, in the host's order.

    A plugin answering something that is not a list of :class:`AdapterConverter`
    is a :class:`PluginError`; a format two plugins provide goes to the first.
    """
    found: dict[str, tuple[str, AdapterConverter]] = {}
    for plugin, items in host.call_all("adapter_converters"):
        if not isinstance(items, (list, tuple)) or not all(isinstance(c, AdapterConverter) for c in items):
            raise PluginError(
                f"plugin {plugin!r} returned {items!r:.120} from adapter_converters; return a list of "
                "adaptrix.adapters.convert.AdapterConverter"
            )
        for conv in items:
            found.setdefault(conv.format, (plugin, conv))
    return found


def _is_peft_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def _by_suffix(converters, path: Path):
    name = path.name.lower()
    return next(((p, c) for p, c in converters.values() if any(name.endswith(s) for s in c.suffixes)), None)


def _missing_converter(path: Path, role: str, converters) -> AdapterError:
    """No installed converter recognises the file ``path``: list those there are and say what to install."""
    known = ", ".join(f"{c.format} ({'/'.join(c.suffixes)}, plugin {p})" for p, c in converters.values()) or "none"
    return AdapterError(
        f"{role} {path} is neither a PEFT adapter folder nor a file of a format an installed plugin converts "
        f"(installed converters: {known}); pass a folder holding {CONFIG_FILE}, or {INSTALL_HINT}"
    )


def convert_adapter(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    host: "Hooks",
) -> Conversion:
    """Convert ``src`` into ``dst`` (PEFT folder -> a plugin's format, or back); see the module docstring.

    ``base`` is the base model file the adapter belongs to; PEFT -> file
    conversions default to the embedded default model. Raises
    :class:`AdapterError` subclasses for bad paths and missing converters,
    and whatever the converter raises for an adapter it refuses.
    """
    src_path, dst_path = Path(src).expanduser(), Path(dst).expanduser()
    if not src_path.exists():
        raise AdapterNotFoundError(f"SRC {src_path} does not exist; pass a PEFT adapter folder or an adapter file")
    if src_path.resolve() == dst_path.resolve():
        raise AdapterError(f"SRC and DST are the same path ({src_path}); pass another DST")
    converters = adapter_converters(host)
    if src_path.is_dir():
        if not _is_peft_folder(src_path):
            raise AdapterFormatError(
                f"SRC {src_path} is not an adapter: the folder has no {CONFIG_FILE}; pass a PEFT adapter folder "
                "(as peft's save_pretrained writes it) or an adapter file"
            )
        found = _by_suffix(converters, dst_path)
        if found is None and dst_path.suffix:
            raise AdapterError(
                f"DST {dst_path}: no installed plugin converts adapters to {dst_path.suffix} files (installed "
                f"formats: {_formats(converters)}); name DST after one of them, or {INSTALL_HINT}"
            )
        if found is None:
            raise AdapterError(
                f"DST {dst_path}: a PEFT folder converts to a file of another format, named by its ending; "
                f"installed formats: {_formats(converters)}"
            )
        plugin, conv = found
        dtype = _check_dtype(conv, dtype)
        base_path = _base_path(base)
        _check_destination(dst_path, overwrite, folder=False)
        if dst_path.exists() and not (conv.is_adapter or conv.recognizes)(dst_path):
            raise AdapterError(
                f"DST {dst_path} is not a {conv.format} adapter; --overwrite replaces an adapter file, never "
                "another file (a model, your data): choose another path"
            )
        _check_apart(_adapter_files(src_path) + [base_path], [dst_path])
        remove_stale(dst_path.parent, name=dst_path.name)
        with guard(dst_path, **_DST_WRITING):  # the converter writes through atomic_file; this catches the rest
            conv.from_peft(src_path, dst_path, base=base_path, dtype=dtype, progress=progress)
        return Conversion(str(src_path), str(dst_path), PEFT, conv.format, str(base_path), dtype, plugin)
    found = next(((p, c) for p, c in converters.values() if c.recognizes(src_path)), None)
    if found is None:
        raise _missing_converter(src_path, "SRC", converters)
    plugin, conv = found
    if dtype is not None and dtype != "f32":
        raise AdapterError(
            f"--dtype {dtype} applies to PEFT -> {conv.format} conversions; a PEFT folder is written in float32: "
            "leave --dtype out"
        )
    if dst_path.suffix and _by_suffix(converters, dst_path) is not None:
        raise AdapterError(
            f"DST {dst_path} names a {conv.format} file, but {src_path} is already one; give a folder name for "
            "the PEFT adapter"
        )
    base_path = None if base is None else _base_path(base)
    _check_destination(dst_path, overwrite, folder=True)
    _check_apart([src_path], [dst_path / n for n in ADAPTER_FILES])
    remove_stale(dst_path.parent, name=dst_path.name)
    _write_folder(dst_path, lambda tmp: conv.to_peft(src_path, tmp, base=base_path, progress=progress))
    return Conversion(
        str(src_path), str(dst_path), conv.format, PEFT, None if base_path is None else str(base_path), None, plugin
    )


def _formats(converters) -> str:
    return ", ".join(f"{c.format} ({'/'.join(c.suffixes)})" for _, c in converters.values()) or "none"


def _check_dtype(conv: AdapterConverter, dtype: str | None) -> str:
    if dtype is None:
        return conv.dtypes[0]
    if dtype not in conv.dtypes:
        raise AdapterError(f"--dtype {dtype!r}: {conv.format} files take {', '.join(conv.dtypes)}")
    return dtype


def _base_path(base: str | os.PathLike | None) -> Path:
    if base is None:
        return default_model_path()
    path = Path(base).expanduser()
    if not path.is_file():
        raise AdapterError(f"--base {path} is not a file; pass the base model's file (e.g. its .gguf)")
    return path


def _check_destination(dst: Path, overwrite: bool, *, folder: bool) -> None:
    if not dst.exists():
        return
    if not overwrite:
        raise AdapterError(f"DST {dst} already exists; pass --overwrite to replace it, or choose another path")
    if folder and dst.is_dir() and any(dst.iterdir()) and not _is_peft_folder(dst):
        raise AdapterError(
            f"DST {dst} is a folder that holds something other than an adapter (no {CONFIG_FILE}); "
            "--overwrite replaces adapter folders only: choose another path"
        )
    if folder != dst.is_dir():
        what = "a folder" if dst.is_dir() else "a file"
        raise AdapterError(f"DST {dst} is {what}; --overwrite replaces it with the same kind only: choose another path")


_DST_WRITING = {"doing": "write DST", "remedy": "choose a DST in a folder adaptrix can write",
                "full_remedy": "free some space, or choose a DST on a disk with room"}
#: The files of a PEFT adapter: what ``--overwrite`` replaces in an existing DST folder, and what SRC is read from.
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, PICKLE_FILE)


def _adapter_files(folder: Path) -> list[Path]:
    return [folder / n for n in ADAPTER_FILES if (folder / n).exists()]


def _check_apart(inputs, outputs) -> None:
    """Refuse a conversion whose output would replace or delete a file it reads (SRC inside DST, or the reverse)."""
    clash = overlap(inputs, outputs)
    if clash is not None:
        src, out = clash
        raise AdapterError(
            f"writing DST would replace {out}, which is SRC {src} (or holds it); the conversion would destroy "
            "its own input: choose a DST outside SRC"
        )


def _write_folder(dst: Path, write: Callable[[Path], Any], **writing: str) -> None:
    """Run ``write(tmp_folder)`` beside ``dst``; its adapter files then replace those of ``dst`` (see module doc)."""
    with replace_files(dst, last=CONFIG_FILE, remove=ADAPTER_FILES, **(writing or _DST_WRITING)) as tmp:
        write(tmp)


def imported_folder(path: str | os.PathLike, *, base: str | os.PathLike | None = None, progress: bool = False,
                    host: "Hooks | None") -> Path:
    """The PEFT folder of an adapter file a plugin's converter recognises (a llama.cpp GGUF LoRA), made once.

    ``load_adapter("x.gguf")`` goes through here: the file is converted into a
    folder under the adaptrix cache, keyed by the file's content, and later
    loads reuse it. ``base`` is the model file the adapter belongs to, for
    formats that need it. Converting takes the plugin ``host`` (a plugin's converter).
    """
    import hashlib


    src = Path(path).expanduser()
    if host is None:
        raise AdapterError(
            f"cannot load the adapter file {src}: this adapter manager was built without a plugin host, "
            "which converts adapter files; load it through an Engine, or convert it first "
            "(adaptrix adapters convert)"
        )
    converters = adapter_converters(host)
    found = next(((p, c) for p, c in converters.values() if c.recognizes(src)), None)
    if found is None:
        raise _missing_converter(src, "adapter file", converters)
    _, conv = found
    digest = hashlib.sha256()
    with open(src, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    folder = IMPORTED.root / f"{digest.hexdigest()[:32]}-{src.stem}"
    if _is_peft_folder(folder):
        touch(folder)
        return folder
    remove_stale(cache_dir(IMPORTED))
    base_path = None if base is None else Path(base)
    with new_folder(folder, **cache_writing(f"write the PEFT folder converted from {src} to")) as tmp:
        conv.to_peft(src, tmp, base=base_path, progress=progress)
        if folder.exists() and not _is_peft_folder(folder):  # an unfinished folder of an older adaptrix
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    return folder
