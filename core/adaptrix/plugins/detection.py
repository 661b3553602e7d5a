"""Decide which family plugin owns a model, from its config alone (no torch)."""

from __future__ import annotations

from typing import Any

from adaptrix.errors import FamilyNotDetectedError, NotACausalLMError
from adaptrix.generation.defaults import GLOBAL_DEFAULTS
from adaptrix.models import modelconfig
from adaptrix.plugins.host import PluginHost, get_host
from adaptrix.types import Detection, GenerationConfig


def detect_family(
    model_id: str, config: dict[str, Any] | None, host: PluginHost | None = None, source: str | None = None
) -> tuple[str, str]:
    """Return ``(family, plugin name)``, or raise a clear error when nobody claims the model."""
    host = host or get_host()
    # The core decides what is a runnable causal LM; plugins only say whose it is.
    if modelconfig.is_causal_lm(config) is False:
        raise NotACausalLMError(modelconfig.not_causal_lm_message(config, source or model_id))
    family, plugin = host.detect(model_id, config)
    if family is not None:
        return family, plugin
    families = ", ".join(host.families()) or "(none: install a plugin, e.g. pip install adaptrix-generic)"
    raise FamilyNotDetectedError(
        f"no installed plugin recognised {model_id!r} (model_type "
        f"{modelconfig.model_type(config)!r}, architectures {modelconfig.architectures(config)}); "
        f"installed families: {families}"
    )


def detect(
    model_id: str,
    *,
    host: PluginHost | None = None,
    revision: str | None = None,
    config: dict[str, Any] | None = None,
    source: str | None = None,
) -> Detection:
    """Read the model's config and report family, plugin, defaults and LoRA targets."""
    host = host or get_host()
    if config is None:
        config, source = modelconfig.load_config(model_id, revision)
    family, plugin = detect_family(model_id, config, host, source)
    family_gen, _ = host.call_family("default_generation_config", family, config=config)
    targets, _ = host.call_family("target_modules", family, config=config)
    generation = (family_gen or GenerationConfig()).merged_over(
        GenerationConfig(context_length=modelconfig.context_length(config))
    ).merged_over(GLOBAL_DEFAULTS)
    warnings = []
    broken = [r for r in host.unavailable() if r.status == "failed"]
    if broken and family not in {f for r in broken for f in r.families} and plugin is not None:
        names = ", ".join(f"{r.name} ({r.error})" for r in broken)
        warnings.append(f"plugin(s) {names} failed to load; {plugin!r} answered for this model")
    if modelconfig.needs_remote_code(config):
        warnings.append(
            "config.json has auto_map (custom modelling code); adaptrix uses the transformers "
            "implementation when there is one and otherwise needs trust_remote_code=True"
        )
    archs = modelconfig.architectures(config)
    return Detection(
        model_id=str(model_id),
        family=family,
        plugin=plugin,
        model_type=modelconfig.model_type(config),
        architecture=archs[0] if archs else None,
        context_length=generation.context_length,
        generation=generation,
        target_modules=tuple(targets or ()),
        config_source=source,
        warnings=tuple(warnings),
        fallback_hooks=host.fallback_hooks(family),
    )
