"""Resolve a model source once: what the user named, where it loads from, its config and its family.

:func:`resolve_source` is the one place that turns a model id (``None`` for the
embedded default, a Hub id, a folder, a ``config.json`` or a ``.gguf``) into a
:class:`ModelSource`. The engine, training, ``adaptrix detect`` and adapter
validation all start from it, so they agree on the answer and read the config
once. It imports no torch: a GGUF's config comes from its header, and the
conversion into a cached safetensors folder happens only when a torch backend
asks for the folder (:meth:`ModelSource.ensure_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from adaptrix.errors import ModelConfigError
from adaptrix.models import gguf_cache, gguf_hub, modelconfig
from adaptrix.models.default_model import HUB_ID, default_model_path, is_default_model
from adaptrix.models.gguf_cache import check_gguf_file
from adaptrix.plugins.detection import detect_family
from adaptrix.plugins.host import PluginHost


@attrs.frozen
class ModelSource:
    """A resolved model source (a value: ``ensure_folder`` returns a new one)."""

    #: What the caller named (``None``: the embedded default model).
    requested: str | None
    #: The model id as resolved: the argument, or the embedded default's file path.
    model_id: str
    #: What ``from_pretrained`` loads: a folder or a Hub id; ``None`` for a GGUF not yet converted.
    path: str | None
    #: The ``.gguf`` file behind this source, if any.
    gguf_file: Path | None
    #: The parsed config (``config.json``, or a GGUF header's minimal config).
    config: dict[str, Any] = attrs.field(repr=False)
    #: Where ``config`` was read from (a file path or the Hub cache path).
    config_source: str
    family: str
    plugin: str | None
    revision: str | None = None
    #: The id to record as ``base_model_name_or_path`` (the Hub id for the embedded default).
    base_model_id: str = ""
    #: The GGUF cache entry once :meth:`ensure_folder` ran (``gguf_cache.CachedGGUF``).
    cache: Any = attrs.field(default=None, repr=False)
    #: Which execution backend runs it; chosen by the caller (``None``: not chosen yet).
    backend: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def load_revision(self) -> str | None:
        """The revision ``from_pretrained`` needs (none for a local or converted folder)."""
        return None if self.is_gguf or modelconfig.looks_local(self.model_id) else self.revision

    def ensure_folder(self, *, progress: bool = True, converter=None) -> "ModelSource":
        """This source with a loadable folder: a GGUF is converted once into the cache (see ``gguf_cache``).

        The converted folder's ``config.json`` (the full transformers config)
        replaces the header's minimal one. Other sources are returned as they are.
        """
        if self.path is not None:
            return self

        cached = gguf_cache.cached_folder(self.gguf_file, progress=progress, converter=converter)
        cfg_file = cached.folder / "config.json"
        config = modelconfig.read_json_object(
            cfg_file, fix=f"delete the cached folder {cached.folder} and load {self.gguf_file} again"
        )
        return attrs.evolve(self, path=str(cached.folder), config=config, config_source=str(cfg_file), cache=cached)

    def hf_config(self, *, trust_remote_code: bool = False):
        """The transformers config object, without loading weights and without converting a GGUF.

        Built from the already-read ``config``; a GGUF not converted yet uses its
        cached folder when one exists, else transformers' own GGUF metadata reader.
        """
        from transformers import AutoConfig
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        config = self.config
        if self.path is None:
            folder = gguf_cache.lookup(self.gguf_file)
            if folder is None:
                try:
                    return AutoConfig.from_pretrained(str(self.gguf_file.parent), gguf_file=self.gguf_file.name)
                except Exception as exc:
                    raise ModelConfigError(
                        f"transformers cannot read the architecture of {self.gguf_file} "
                        f"({type(exc).__name__}: {exc}); use a safetensors model folder"
                    ) from exc
            config = modelconfig.read_json_object(folder / "config.json")
        model_type = config.get("model_type")
        if model_type in CONFIG_MAPPING:
            try:
                return CONFIG_MAPPING[model_type].from_dict(dict(config))
            except Exception as exc:
                raise ModelConfigError(
                    f"{self.config_source}: transformers rejects this {model_type!r} config "
                    f"({type(exc).__name__}: {exc}); fix or re-download it"
                ) from exc
        try:  # custom code (auto_map): transformers must fetch and run the model's own config class
            return AutoConfig.from_pretrained(
                self.path, revision=self.load_revision, trust_remote_code=trust_remote_code
            )
        except Exception as exc:
            raise ModelConfigError(
                f"{self.config_source}: transformers cannot build a config for model_type {model_type!r} "
                f"({type(exc).__name__}: {exc}); for custom code pass --trust-remote-code after reading it"
            ) from exc


def resolve_source(
    model_id: str | os.PathLike | None,
    *,
    revision: str | None = None,
    family: str | None = None,
    progress: bool = True,
    host: PluginHost,
) -> ModelSource:
    """Resolve ``model_id`` into a :class:`ModelSource` (config read once, family detected or checked).

    ``None`` is the embedded default model; a GGUF repo on the Hub
    (``owner/repo-GGUF:Q4_K_M``, ``owner/repo-GGUF/file.gguf``) is downloaded
    into the Hugging Face cache (see :mod:`adaptrix.models.gguf_hub`). ``family`` overrides detection (an
    error when no plugin provides it). ``progress`` is kept for the later,
    explicit conversion step; reading a source never converts anything. ``host`` is the plugin host
    that detects (or provides) the family.
    """
    del progress  # resolving reads headers only; conversion is ensure_folder's (and shows its own bar)
    requested = None if model_id is None else modelconfig.check_model_id(model_id)
    resolved = str(default_model_path()) if requested is None else requested
    hub_gguf = gguf_hub.parse_gguf_source(resolved)
    if hub_gguf is not None and not hub_gguf.is_local:  # owner/repo-GGUF:Q4_K_M and the like
        gguf = gguf_hub.resolve_gguf_source(resolved, revision=revision).path
    else:
        gguf = modelconfig.gguf_file_of(resolved)
    if gguf is not None:
        gguf = gguf.expanduser()

        check_gguf_file(gguf)  # missing, not GGUF or truncated: a clear error before anything else
    config, config_source = modelconfig.load_config(str(gguf) if gguf is not None else resolved, revision)
    if family:
        plugin = host.owner(family)  # a clear error when no plugin provides it
    else:
        family, plugin = detect_family(resolved, config, host, config_source)
    base_id = HUB_ID if requested is None or is_default_model(resolved) else resolved
    return ModelSource(
        requested=requested,
        model_id=resolved,
        path=None if gguf is not None else _load_path(resolved),
        gguf_file=gguf,
        config=config,
        config_source=config_source,
        family=family,
        plugin=plugin,
        revision=revision,
        base_model_id=base_id,
    )


def _load_path(model_id: str) -> str:
    """The folder (or Hub id) ``from_pretrained`` takes: a ``config.json`` path loads its folder."""
    if modelconfig.looks_local(model_id):
        path = Path(os.path.expanduser(model_id))
        return str(path.parent if path.is_file() else path)
    return model_id
