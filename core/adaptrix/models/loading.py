"""The shared loader family plugins call from their ``load_model`` hook.

A plugin passes its own tokenizer fixes; everything else (device, dtype,
remote-code policy, clear errors for broken files) is the same for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from adaptrix.errors import ModelLoadError, RemoteCodeError
from adaptrix.models import modelconfig
from adaptrix.models.devices import resolve_device, resolve_dtype
from adaptrix.types import LoadedModel, LoadOptions

TokenizerFix = Callable[[Any, dict], "list[str] | None"]


def check_remote_code(model_id: str, config: dict | None, options: LoadOptions) -> bool:
    """Decide whether custom code must run; refuse it unless the user opted in.

    Returns the ``trust_remote_code`` value to pass to transformers: ``False``
    whenever transformers has its own implementation of the ``model_type``.
    """
    if not modelconfig.needs_remote_code(config):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.get("model_type") in CONFIG_MAPPING_NAMES:
        return False  # transformers has a native implementation; never run downloaded code
    if not options.trust_remote_code:
        raise RemoteCodeError(
            f"{model_id}: config.json asks for custom modelling code (auto_map "
            f"{sorted(config['auto_map'])}) and transformers has no built-in {config.get('model_type')!r}; "
            "read that code, then pass trust_remote_code=True (CLI: --trust-remote-code) to run it"
        )
    return True


def default_tokenizer_fixes(tokenizer) -> list[str]:
    """Fixes every decoder-only model needs: a pad token and left padding."""
    notes = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            notes.append(f"pad token set to the EOS token {tokenizer.eos_token!r}")
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
            notes.append(f"pad token set to the UNK token {tokenizer.unk_token!r}")
    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"
        notes.append("padding side set to left (decoder-only batching)")
    return notes


def load_causal_lm(
    family: str,
    model_id: str,
    options: LoadOptions,
    *,
    fix_tokenizer: TokenizerFix | None = None,
) -> LoadedModel:
    """Load model + tokenizer with transformers' Auto classes and the family's fixes.

    How the model chats is not the loader's: the backend asks the family's
    ``chat_behaviour`` hook afterwards (:mod:`adaptrix.plugins.family_chat`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if options.config is not None:
        config, source = options.config, options.config_source or str(model_id)
    else:
        config, source = modelconfig.load_config(model_id, options.revision)
    modelconfig.require_causal_lm(config, source)
    trust = check_remote_code(model_id, config, options)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    common: dict[str, Any] = {"revision": options.revision, "trust_remote_code": trust}
    if options.gguf_file:
        common["gguf_file"] = options.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, **common)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {model_id} ({type(exc).__name__}: {exc}); the folder needs "
            "tokenizer files (tokenizer.json or vocab/merges, tokenizer_config.json) saved with the model"
        ) from exc
    text_only = _text_model_config(model_id, config, common)
    try:
        if text_only is not None:
            model = AutoModelForCausalLM.from_pretrained(
                model_id, config=text_only, key_mapping=VL_TEXT_KEYS, dtype=dtype, **common, **options.extra
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, **common, **options.extra)
    except Exception as exc:
        raise ModelLoadError(_weights_error(model_id, exc)) from exc
    model.to(device)
    model.eval()
    notes = default_tokenizer_fixes(tokenizer)
    if fix_tokenizer is not None:
        notes += fix_tokenizer(tokenizer, config) or []
    if getattr(model, "generation_config", None) is not None and tokenizer.pad_token_id is not None:
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        family=family,
        model_id=str(model_id),
        config=config,
        notes=tuple(notes),
    )


#: Checkpoint key prefixes of a vision-language model's language model -> the text model's.
VL_TEXT_KEYS = {
    r"^model\.language_model\.": "model.",
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}


def _text_model_config(model_id: str, config: dict | None, common: dict[str, Any]):
    """The text config to load a vision-language checkpoint's language model with, or ``None``.

    ``None`` also when transformers' causal-LM class for the config's own
    ``model_type`` is already text-only (it takes the full config itself).
    """
    from transformers import AutoConfig

    text_type = modelconfig.text_model_type(config)
    if text_type is None or text_type == modelconfig.model_type(config):
        return None
    try:
        full = AutoConfig.from_pretrained(model_id, **common)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config of {model_id} ({type(exc).__name__}: {exc})") from exc
    text = full.get_text_config(decoder=True)
    if getattr(text, "model_type", None) != text_type:
        fields = {k: v for k, v in text.to_dict().items() if k != "model_type"}
        text = AutoConfig.for_model(text_type, **fields)
    # A VL checkpoint ties the language model's head at the top level.
    if getattr(full, "tie_word_embeddings", None) is not None:
        text.tie_word_embeddings = full.tie_word_embeddings
    return text


def _weights_error(model_id: str, exc: BaseException) -> str:
    path = Path(str(model_id))
    files = sorted(p.name for p in path.glob("*.safetensors")) if path.is_dir() else []
    what = f"{type(exc).__name__}: {exc}"
    if files and ("header" in str(exc).lower() or "safetensor" in what.lower() or "deserializ" in what.lower()):
        return (
            f"cannot read the weights of {model_id} ({', '.join(files)}): {what}; the file looks corrupt "
            "or truncated, re-download or re-save it"
        )
    return f"cannot load the weights of {model_id}: {what}"
