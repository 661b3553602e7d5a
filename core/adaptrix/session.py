"""What ``Engine.initialize()`` loads: a :class:`Session`, and the model information it answers with.

:func:`load_session` resolves the source once (:mod:`adaptrix.models.source`),
asks the plugins for the family's defaults, picks a backend
(:mod:`adaptrix.backends.choice`) whose :class:`~adaptrix.backends.contract.Runner`
executes the model, builds the backend's adapter manager and the request
preparer for this model. A failure closes what was loaded and leaves nothing.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import attrs

from adaptrix.adapters.manager import AdapterManager
from adaptrix.backends.choice import Choice, choose_backend
from adaptrix.backends.contract import Runner
from adaptrix.errors import ChatTemplateError, PluginError
from adaptrix.generation.conversation import template_source
from adaptrix.generation.defaults import GLOBAL_DEFAULTS
from adaptrix.generation.lease import ModelLease
from adaptrix.generation.preparer import RequestPreparer
from adaptrix.models import modelconfig
from adaptrix.models.source import ModelSource, resolve_source
from adaptrix.plugins import family_options as fo
from adaptrix.plugins.host import get_host
from adaptrix.generation.tools.format import ToolFormat
from adaptrix.types import GenerationConfig, LoadOptions


@attrs.frozen
class Session:
    """What ``initialize()`` loaded: the resolved source, the backend chosen and its runner, the adapter
    manager, the request preparer, the family's defaults and the context window."""

    source: ModelSource
    choice: Choice
    runner: Runner
    manager: AdapterManager
    preparer: RequestPreparer
    family_defaults: GenerationConfig
    context_length: int | None
    load_seconds: float


def load_session(
    model_id: str | os.PathLike | None,
    *,
    revision: str | None,
    family: str | None,
    family_options: Mapping[str, Any],
    backend: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    progress: bool,
    threads: int | None,
    adapters_dir: str | os.PathLike,
    max_loaded_adapters: int | None,
    max_adapter_bytes: int | None,
    merge_adapters: bool,
    lock: ModelLease,
) -> Session:
    """Load the model ``model_id`` on ``backend`` (``auto`` or a backend's name) with its adapter manager.

    ``family`` overrides detection; ``family_options`` are checked against the family found; ``lock``
    is the engine's model lease, which the adapter manager holds for its operations.
    """
    start = time.perf_counter()
    host = get_host()
    src = resolve_source(model_id, revision=revision, family=family, host=host)
    if family_options:
        fo.check_family(dict(family_options), host, src.family)
    choice = choose_backend(src, backend, host)
    options = LoadOptions(
        device=str(device),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        revision=src.load_revision,
        family_options=dict(family_options),
        config=src.config,
        config_source=src.config_source,
        progress=progress,
        threads=threads,
    )
    runner = choice.backend.load(src, options, host)
    try:
        src = runner.source  # the backend may have converted it (a GGUF into a cached folder)
        family_gen, _ = host.call_family("default_generation_config", src.family, config=src.config)
        family_gen = (family_gen or GenerationConfig()).merged_over(
            GenerationConfig(context_length=modelconfig.context_length(src.config))
        )
        # the smaller of what the config says and what the backend allocated (llama.cpp caps its KV cache)
        known = [c for c in (family_gen.context_length, runner.context_length) if c]
        ctx = min(known) if known else None
        if ctx is None:
            limit = getattr(runner.loaded.tokenizer, "model_max_length", None)
            ctx = limit if isinstance(limit, int) and 0 < limit < 10**7 else None
        manager = runner.adapter_manager(
            adapters_dir, max_loaded_adapters=max_loaded_adapters,
            max_adapter_bytes=max_adapter_bytes, merge=merge_adapters, lock=lock,
            host=host,
        )
        preparer = RequestPreparer(
            runner.loaded, eos_ids=runner.eos_ids, pad_id=runner.pad_id, family_defaults=family_gen,
            context_length=ctx, model_name=src.model_id, manager=manager,
            tool_format=ask_tool_format(host, src.family, src.config, runner.loaded.tokenizer),
        )
    except BaseException:
        runner.close()
        raise
    return Session(src, choice, runner, manager, preparer, family_gen, ctx, time.perf_counter() - start)


def ask_tool_format(host, family: str, config: dict[str, Any] | None, tokenizer) -> ToolFormat:
    """The family's :class:`~adaptrix.generation.tools.format.ToolFormat` (the ``tool_format`` hook, else the generic one)."""
    try:
        template = template_source(tokenizer)
    except ChatTemplateError:
        template = None
    answer, plugin = host.call_family("tool_format", family, config=config, template=template)
    if not isinstance(answer, ToolFormat):
        raise PluginError(f"plugin {plugin!r}: hook tool_format({family!r}) must return an adaptrix ToolFormat "
                          f"(adaptrix.generation.tools.ToolFormat) or None, got {answer!r}")
    return answer


def model_info(session: Session, *, use_context_by_default: bool, conversations: list[str]) -> dict[str, Any]:
    """``Engine.get_model_info()``: family, plugin, backend, model, source, size, dtype, device, context,
    defaults, the engine's conversation state (given), adapters."""
    src, loaded = session.source, session.runner.loaded
    config = src.config or {}
    archs = config.get("architectures") or []
    info: dict[str, Any] = {
        "family": src.family,
        "plugin": src.plugin,
        "backend": session.choice.name,
        "backend_reason": session.choice.reason,
        "model_id": src.model_id,
        "source": src.path or (str(src.gguf_file) if src.gguf_file else src.model_id),
        "gguf_file": str(src.gguf_file) if src.gguf_file else None,
        "model_type": config.get("model_type"),
        "architecture": archs[0] if archs else None,
        **session.runner.info(),
        "context_length": session.context_length,
        "generation_defaults": attrs.evolve(session.family_defaults.merged_over(GLOBAL_DEFAULTS),
                                            context_length=session.context_length).as_dict(),
        "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
        "chat_template_kwargs": dict(loaded.chat_template_kwargs),
        "hidden_spans": [list(p) for p in loaded.hidden_spans],
        "tool_format": session.preparer.tool_format.name,
        "use_context_by_default": use_context_by_default,
        "conversations": conversations,
        "load_seconds": round(session.load_seconds, 3),
        "notes": list(loaded.notes),
    }
    info.update(session.manager.status())
    return info
