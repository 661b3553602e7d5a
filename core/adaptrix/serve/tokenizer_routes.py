"""``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``: the model's tokenizer, in vLLM's shapes.

lm-evaluation-harness's ``tokenizer_backend=remote`` (and its ``auto``, which probes ``/tokenizer_info``)
tokenizes through these, so it needs no local copy of the tokenizer. Adapters do not change the tokenizer:
``model`` may name the base model or any adapter (or be left out), and an unknown name is a 404.

- ``/tokenize``: ``{"prompt": text, "add_special_tokens": true}`` or ``{"messages": [...]}`` (formatted as
  ``/v1/chat/completions`` formats them, generation prompt included); answers ``{"count", "max_model_len",
  "tokens", "token_strs"}`` (``token_strs`` with ``"return_token_strs": true``, else ``null``).
- ``/detokenize``: ``{"tokens": [ids]}`` -> ``{"prompt": text}`` (special tokens kept, as vLLM).
- ``/tokenizer_info``: ``tokenizer_class``, the special tokens, ``chat_template``, ``model_max_length`` and
  the tokenizer's other JSON-safe settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

from adaptrix.errors import GenerationError
from adaptrix.generation.token_ids import check_token_ids, vocabulary_size
from adaptrix.serve.completions import json_response
from adaptrix.serve.errors import ApiError
from adaptrix.serve.scheduler import api_error
from adaptrix.serve.schemas import parse_completion

#: Tokenizer settings never sent (large, or paths of this machine).
_HIDDEN = {"added_tokens_decoder", "name_or_path", "vocab_file", "merges_file", "tokenizer_file",
           "special_tokens_map_file", "auto_map", "tokenizer_object"}


def _bad(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                       code="invalid_body")
    return body


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, got {value!r:.80}", name)
    return value


def _model(server, body: dict) -> None:
    """``model``, when given, must name the base model or an adapter (404 otherwise, as the completions)."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str) or not model:
        raise _bad(f"'model' must be a non-empty string, got {model!r:.80}", "model")
    names = server.adapter_folders()
    if model not in ("base", server.model_id) and model not in names:
        available = ", ".join(["base", server.model_id, *sorted(names)])
        raise ApiError(404, f"model {model!r} does not exist; available: {available}", param="model",
                       code="model_not_found")


async def _on_engine(server, fn):
    """``fn(engine)`` on the scheduler thread (between two decode steps): tokenizers are not shared across
    threads while the model runs."""
    try:
        return await asyncio.wrap_future(server.scheduler.call(fn))
    except ApiError:
        raise
    except Exception as exc:
        raise api_error(exc) from None


async def tokenize(server, request):
    body = _body(await server.read_json(request))
    _model(server, body)
    strs = _flag(body, "return_token_strs", False)
    if "messages" in body:
        if "prompt" in body:
            raise _bad("give 'prompt' or 'messages', not both", "prompt")
        if not _flag(body, "add_generation_prompt", True):
            raise _bad("'add_generation_prompt': false cannot be served: messages are formatted as "
                       "/v1/chat/completions formats them, with the assistant's turn opened", "add_generation_prompt")
        if _flag(body, "continue_final_message", False):
            raise _bad("'continue_final_message' cannot be served: the last message must be the user's",
                       "continue_final_message")
        req = parse_completion({"messages": body["messages"], "tools": body.get("tools")}, "chat", ())

        def ids(engine):
            return list(engine.prepare_request(req.prompt, history=req.history, system=req.system, tools=req.tool_use,
                                               prompt_message=req.prompt_message).input_ids)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise _bad(f"'prompt' must be a string (or send 'messages'), got {prompt!r:.80}", "prompt")
        special = _flag(body, "add_special_tokens", True)

        def ids(engine):
            return [int(i) for i in engine.tokenizer(prompt, add_special_tokens=special)["input_ids"]]

    def work(engine):
        tokens = ids(engine)
        info = engine.get_model_info()
        pieces = [engine.tokenizer.convert_ids_to_tokens(t) for t in tokens] if strs else None
        return {"count": len(tokens), "max_model_len": info.get("context_length"), "tokens": tokens,
                "token_strs": pieces}

    return json_response(await _on_engine(server, work))


async def detokenize(server, request):
    body = _body(await server.read_json(request))
    _model(server, body)
    tokens = body.get("tokens")

    def work(engine):
        try:
            ids = check_token_ids(tokens, engine.tokenizer, "tokens") if tokens != [] else ()
        except GenerationError as exc:
            raise _bad(str(exc), "tokens") from None
        return {"prompt": engine.tokenizer.decode(list(ids), skip_special_tokens=False) if ids else ""}

    return json_response(await _on_engine(server, work))


def _safe(value: Any) -> Any:
    """A tokenizer setting as JSON (an ``AddedToken`` as its text); ``None`` when it has no JSON form."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "content") and isinstance(value.content, str):
        return value.content
    if isinstance(value, (list, tuple)):
        items = [_safe(v) for v in value]
        return None if any(i is None for i in items) else items
    if isinstance(value, dict):
        items = {str(k): _safe(v) for k, v in value.items()}
        return None if any(v is None for v in items.values()) else items
    return None


def tokenizer_info_of(engine) -> dict[str, Any]:
    """vLLM's ``/tokenizer_info`` answer for ``engine``'s tokenizer."""
    tok = engine.tokenizer
    info: dict[str, Any] = {}
    for key, value in (getattr(tok, "init_kwargs", None) or {}).items():
        if key not in _HIDDEN and (safe := _safe(value)) is not None:
            info[key] = safe
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        info[name] = _safe(getattr(tok, name, None))
    context = engine.get_model_info().get("context_length")
    if context:
        info["model_max_length"] = context
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and template:
        info["chat_template"] = template
    info["vocab_size"] = vocabulary_size(tok)
    info["tokenizer_class"] = type(tok).__name__
    return {k: v for k, v in info.items() if v is not None}


async def tokenizer_info(server, request):
    return json_response(await _on_engine(server, tokenizer_info_of))
