"""Request bodies of the completion endpoints, validated into frozen records.

Every refusal is an :class:`~.errors.ApiError` (400) whose message names the
field and the value at fault. What each field does (served, refused,
metadata that cannot change an answer) is :mod:`adaptrix.serve.fields`'s; a
field it does not know is refused, never ignored.

adaptrix extras (``extra_body`` in the ``openai`` client):

- ``task_type``: a task preset (``general``, ``chat``, ``code``, ``math``, ``creative``);
- ``adapters``: ``{"name": weight, ...}`` (or ``[{"name", "weight"}]``), a weighted
  composition of adapters used for this request only; ``model`` must then be the base;
- ``top_k``, ``repetition_penalty``: the engine's settings (vLLM's names).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from adaptrix.adapters.compositions import check_composition_weights
from adaptrix.errors import AdapterError, ToolError
from adaptrix.generation.defaults import PENALTY_LIMIT
from adaptrix.generation.grammar import Grammar
from adaptrix.generation.scoring import MAX_TOP
from adaptrix.generation.settings import BIAS_LIMIT, SEED_LIMIT
from adaptrix.generation.token_ids import is_token_ids
from adaptrix.generation.tools.messages import Chat, split_messages
from adaptrix.generation.tools.spec import ToolUse, check_tool_use
from adaptrix.serve.errors import ApiError
from adaptrix.serve.fields import known
from adaptrix.serve.response_format import parse_response_format

#: The most stop strings one request may give (lm-eval sends a task's ``until`` strings plus EOS).
MAX_STOPS = 32
#: The most choices one request may ask for (``n``).
MAX_N = 8
#: Fields of OpenAI's APIs adaptrix cannot serve: a request that sets one (to anything but its neutral value)
#: is answered 400 naming it, never silently served without it.
UNSERVED = {
    "suffix": (None, "", "text after the insertion point (fill-in-the-middle) is not supported"),
    "best_of": (None, 1, "adaptrix returns one completion per prompt"),
    "functions": (None, [], "'functions' is OpenAI's deprecated form of 'tools': send 'tools' instead"),
    "function_call": (None, "none", "'function_call' is OpenAI's deprecated form of 'tool_choice': send "
                                    "'tool_choice' instead"),
    "prompt_logprobs": (None, "prompt logprobs come with 'echo': true and 'logprobs' (OpenAI's way)"),
    "audio": (None, "adaptrix answers in text only"),
    "modalities": (None, ["text"], "adaptrix answers in text only"),
    "reasoning_effort": (None, "adaptrix does not set a reasoning effort (a thinking family's chat_template_kwargs "
                               "'enable_thinking' switches thought on or off)"),
    "verbosity": (None, "adaptrix does not steer an answer's length by a verbosity level; use max_tokens"),
    "web_search_options": (None, "adaptrix has no web search"),
    "moderation": (None, "adaptrix runs no moderation model"),
}


@attrs.frozen
class CompletionRequest:
    """One validated ``/v1/chat/completions`` or ``/v1/completions`` request."""

    kind: str  # "chat" or "completion"
    model: str
    #: The text the model answers: the last user message (chat) or the prompt (completion: text, or token ids
    #: fed as they are).
    prompt: str | tuple[int, ...]
    #: Earlier chat messages, ``{"role", "content"}`` with roles user/assistant, and tool turns.
    history: tuple[dict[str, str], ...] = ()
    system: str | None = None
    #: Engine settings (``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``), only those given.
    settings: dict[str, Any] = attrs.field(factory=dict)
    stream: bool = False
    include_usage: bool = False
    task_type: str | None = None
    #: The body's ``adapters``: the weights ``((name, weight), ...)`` of a composition built for this request,
    #: or None.
    composition: tuple[tuple[str, float], ...] | None = None
    #: Filled by the server: the adapter serving it (None = base model).
    adapter: str | None = None
    #: Log-probabilities of the generated tokens with this many alternatives each (0..20); None: none.
    #: Completions' ``logprobs: K``; chat's ``logprobs: true`` with ``top_logprobs: K``.
    logprobs: int | None = None
    #: Completions: the prompt is returned before the generated text (and scored, with ``logprobs``).
    echo: bool = False
    #: Choices to generate for the prompt (1..MAX_N), each its own job; choice ``j`` of a request seeded ``s``
    #: is seeded ``s + j`` (:func:`choice_seeds`).
    n: int = 1
    #: The output's constraint (``response_format``, :mod:`.response_format`); None: free text.
    grammar: Grammar | None = None
    #: Chat: the ``tools`` offered and the ``tool_choice`` (``None``: no tool may be called).
    tool_use: ToolUse | None = None
    #: Chat: the last message's fields when it is a tool result (``{"role": "tool", "tool_call_id"}``).
    prompt_message: dict[str, Any] | None = None

    @property
    def score_only(self) -> bool:
        """``max_tokens: 0``: nothing is generated (with ``echo``, the prompt alone is returned and scored)."""
        return self.settings.get("max_new_tokens") == 0


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(body: dict, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a finite number, got {_short(value)}", name)
    if low is not None and (value < low or (low_open and value == low)):
        raise _bad(f"'{name}' must be {'>' if low_open else '>='} {low:g}, got {value!r}", name)
    if high is not None and value > high:
        raise _bad(f"'{name}' must be <= {high:g}, got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, *, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise _bad(f"'{name}' must be an integer, got {_short(value)}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _bad(f"'{name}' must be {bounds}, got {value}", name)
    return value


def _text(value: Any, param: str) -> str:
    """Message content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"'{param}[{i}]' must be a text part {{\"type\": \"text\", \"text\": ...}}, got "
                           f"{_short(part)}; adaptrix serves text only", f"{param}[{i}]")
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise _bad(f"'{param}' must be a string, got {_short(value)}", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"'{param}' holds a lone surrogate character; send valid UTF-8 text", param) from None
    return text


def _messages(body: dict) -> Chat:
    """The chat's messages split (:func:`adaptrix.generation.tools.messages.split_messages`: tool turns included), content
    read as text (a string or text parts)."""
    if "messages" not in body:
        raise _bad("'messages' is required: a list of {\"role\", \"content\"} objects", "messages", "missing_field")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _bad(f"'messages' must be a non-empty list of messages, got {_short(messages)}", "messages")
    try:
        return split_messages(messages, _text)
    except ToolError as exc:
        code = "missing_field" if "is required" in str(exc) else "invalid_value"
        raise _bad(str(exc), exc.param, code) from None


def _tools(body: dict, kind: str) -> ToolUse | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` (chat only), checked: 400 naming the field."""
    if kind != "chat":
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            if body.get(name) not in (None, []):
                raise _bad(f"'{name}' is a /v1/chat/completions field; /v1/completions takes no tools", name,
                           "unsupported_field")
        return None
    try:
        return check_tool_use(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"))
    except ToolError as exc:
        raise _bad(str(exc), exc.param) from None


def _prompt(body: dict, param: str = "prompt") -> str | tuple[int, ...]:
    """One prompt: a string, or a non-empty list of token ids (several prompts: :func:`split_prompts`)."""
    if "prompt" not in body:
        raise _bad("'prompt' is required: a string, a list of strings, a list of token ids or a list of lists of "
                   "token ids", "prompt", "missing_field")
    value = body["prompt"]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if is_token_ids(value):
        if not value:
            raise _bad(f"'{param}' is an empty list of token ids; give at least one", param)
        if any(i < 0 for i in value):
            raise _bad(f"'{param}' holds a negative token id, {min(value)}", param)
        return tuple(value)
    if not isinstance(value, str):
        raise _bad(f"'{param}' must be a string or a list of token ids, got {_short(value)}", param)
    text = _text(value, param)
    if not text.strip():
        raise _bad(f"'{param}' is empty; give the model some text to continue", param)
    return text


def split_prompts(body: Any) -> list[tuple[str, Any]]:
    """OpenAI's four prompt forms as ``[(param, one prompt)]``: a string, a list of strings, a list of token ids,
    a list of lists of token ids (one choice per prompt, in order)."""
    if not isinstance(body, dict) or "prompt" not in body:
        return [("prompt", body.get("prompt") if isinstance(body, dict) else None)]
    value = body["prompt"]
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        return [(f"prompt[{i}]", p) for i, p in enumerate(value)]
    return [("prompt", value)]


def _stop(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOPS:
        raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them, got "
                   f"{_short(stop)}", "stop")
    return list(dict.fromkeys(stop))  # the same string twice stops no differently


def _logit_bias(body: dict) -> dict[int, float] | None:
    """OpenAI's ``logit_bias``: ``{"token id": bias}`` (keys are strings in JSON), each bias in [-100, 100]."""
    value = body.get("logit_bias")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(f"'logit_bias' must be an object {{\"token id\": bias}}, got {_short(value)}", "logit_bias")
    out: dict[int, float] = {}
    for key, bias in value.items():
        token = key.strip() if isinstance(key, str) else ""
        if not token.isdigit():
            raise _bad(f"'logit_bias' keys must be token ids (whole numbers >= 0, as strings), got {_short(key)}",
                       "logit_bias")
        if (isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)
                or not -BIAS_LIMIT <= bias <= BIAS_LIMIT):
            raise _bad(f"'logit_bias' of token {token} must be a number from -100 to 100, got {_short(bias)}",
                       "logit_bias")
        out[int(token)] = float(bias)
    return out or None


def _unknown(body: dict, kind: str) -> None:
    """A field no one serves, refuses or documents as metadata is refused: a client's typo or another
    server's extension is never silently dropped."""
    strange = sorted(set(body) - known(kind) - set(UNSERVED))
    if strange:
        where = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        raise _bad(f"'{strange[0]}' is not a field of {where} that adaptrix knows; leave it out (docs/serve.md "
                   "lists every field)", strange[0], "unknown_field")


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """The seed of each of ``n`` choices: ``seed, seed + 1, ...`` (wrapping below 2**64); unseeded: ``None``."""
    return [None if seed is None else (seed + j) % SEED_LIMIT for j in range(n)]


def _unserved(body: dict) -> None:
    for name, (*neutral, why) in UNSERVED.items():
        if name in body and body[name] not in neutral:
            raise _bad(f"'{name}' cannot be served: {why}; leave it out", name, "unsupported_field")


def _logprobs(body: dict, kind: str) -> int | None:
    """Completions' ``logprobs: K``, chat's ``logprobs: true`` + ``top_logprobs: K``, as K (None: not asked)."""
    if kind == "completion":
        if body.get("top_logprobs") is not None:
            raise _bad("'top_logprobs' is a chat field; on /v1/completions 'logprobs' is the number of "
                       "alternatives (0-20)", "top_logprobs")
        if isinstance(body.get("logprobs"), bool):
            raise _bad(f"'logprobs' on /v1/completions is the number of alternatives per token (0-{MAX_TOP}), "
                       f"got {body['logprobs']}", "logprobs")
        return _integer(body, "logprobs", low=0, high=MAX_TOP)
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise _bad(f"'logprobs' must be true or false, got {_short(asked)}", "logprobs")
    top = _integer(body, "top_logprobs", low=0, high=MAX_TOP)
    if top is not None and not asked:
        raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if asked else None


def _composition(body: dict) -> tuple[tuple[str, float], ...] | None:
    """The weights of the body's ``adapters`` field, checked and sorted by name (None when absent)."""
    value = body.get("adapters")
    if value is None:
        return None
    pairs: list[tuple[Any, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "name" not in item:
                raise _bad(f"'adapters[{i}]' must be {{\"name\": ..., \"weight\": ...}}, got {_short(item)}",
                           f"adapters[{i}]")
            pairs.append((item["name"], item.get("weight", 1.0)))
    else:
        raise _bad(f"'adapters' must be an object {{name: weight}}, got {_short(value)}", "adapters")
    if not pairs:
        raise _bad("'adapters' is empty; name at least one adapter with a weight, or leave it out", "adapters")
    for name, weight in pairs:
        if not isinstance(name, str) or not name:
            raise _bad(f"'adapters' names must be non-empty strings, got {_short(name)}", "adapters")
        try:  # the engine's own rule (finite, bounded), so the server and the library refuse the same weights
            check_composition_weights({name: weight}, who="'adapters'")
        except AdapterError as exc:
            raise _bad(str(exc), f"adapters.{name}") from None
    return tuple(sorted((name, float(weight)) for name, weight in pairs))


def parse_completion(body: Any, kind: str, task_types: tuple[str, ...], prompt_param: str = "prompt") -> CompletionRequest:
    """Validate a request body (already JSON-decoded); ``kind`` is ``chat`` or ``completion`` (one prompt:
    :func:`split_prompts` gives each of several, named ``prompt_param`` in errors)."""
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_body")
    model = body.get("model", "base")
    if not isinstance(model, str) or not model:
        raise _bad(f"'model' must be a non-empty string (the base model or an adapter name), got {_short(model)}",
                   "model")
    _unserved(body)
    prompt_message = None
    if kind == "chat":
        chat = _messages(body)
        prompt, history, system, prompt_message = chat.prompt, chat.history, chat.system, chat.prompt_message
    else:
        prompt, history, system = _prompt(body, prompt_param), (), None
    tool_use = _tools(body, kind)
    n = _integer(body, "n", low=1, high=MAX_N)
    settings: dict[str, Any] = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = _number(body, name, low=-PENALTY_LIMIT, high=PENALTY_LIMIT)
        if value is not None:
            settings[name] = value
    bias = _logit_bias(body)
    if bias:
        settings["logit_bias"] = bias
    top_k = _integer(body, "top_k", low=0)
    if top_k is not None:
        settings["top_k"] = top_k
    repetition = _number(body, "repetition_penalty", low=0.0, low_open=True)
    if repetition is not None:
        settings["repetition_penalty"] = repetition
    temperature = _number(body, "temperature", low=0.0)
    if temperature is not None:
        settings["temperature"] = temperature
    top_p = _number(body, "top_p", low=0.0, high=1.0, low_open=True)
    if top_p is not None:
        settings["top_p"] = top_p
    max_tokens = _integer(body, "max_completion_tokens", low=1)
    if max_tokens is None:  # completions: 0 generates nothing (with echo: the prompt is scored alone)
        max_tokens = _integer(body, "max_tokens", low=1 if kind == "chat" else 0)
    if max_tokens is not None:
        settings["max_new_tokens"] = max_tokens
    stop = _stop(body)
    if stop:
        settings["stop"] = stop
    seed = _integer(body, "seed", low=0, high=SEED_LIMIT - 1)  # the engine's range, from its one owner
    if seed is not None:
        settings["seed"] = seed
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {_short(stream)}", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad(f"'stream_options' must be an object, got {_short(options)}", "stream_options")
        if not stream:
            raise _bad("'stream_options' is only allowed with 'stream': true", "stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _bad(f"'stream_options.include_usage' must be true or false, got {_short(include_usage)}",
                       "stream_options.include_usage")
    echo = body.get("echo", False)
    if kind == "chat" and "echo" in body and echo not in (None, False):
        raise _bad("'echo' is a /v1/completions field; chat answers do not repeat the messages", "echo")
    if echo is None:
        echo = False
    if not isinstance(echo, bool):
        raise _bad(f"'echo' must be true or false, got {_short(echo)}", "echo")
    task_type = body.get("task_type")
    if task_type is not None and task_type not in task_types:
        raise _bad(f"'task_type' must be one of {', '.join(task_types)}, got {_short(task_type)}", "task_type")
    composition, logprobs = _composition(body), _logprobs(body, kind)
    _unknown(body, kind)
    return CompletionRequest(
        kind=kind, model=model, prompt=prompt, history=history, system=system, settings=settings, stream=stream,
        include_usage=include_usage, task_type=task_type, composition=composition, logprobs=logprobs, echo=echo,
        n=n or 1, grammar=parse_response_format(body), tool_use=tool_use, prompt_message=prompt_message,
    )


@attrs.frozen
class LoadRequest:
    """``POST /v1/load_lora_adapter`` (vLLM's payload)."""

    name: str
    path: str


def parse_load(body: Any) -> LoadRequest:
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_body")
    name = parse_name(body)
    path = body.get("lora_path")
    if not isinstance(path, str) or not path.strip():
        raise _bad(f"'lora_path' must be the adapter folder's path, got {_short(path)}", "lora_path")
    return LoadRequest(name, path)


def parse_name(body: Any) -> str:
    """``lora_name`` of a load or unload body."""
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_body")
    name = body.get("lora_name")
    if not isinstance(name, str) or not name.strip():
        raise _bad(f"'lora_name' must be a non-empty string, got {_short(name)}", "lora_name")
    if name != name.strip() or any(c in name for c in "/\\\0") or name in (".", "..") or len(name) > 128:
        raise _bad(f"'lora_name' {_short(name)} is not a valid adapter name: no slashes, no surrounding spaces, "
                   "at most 128 characters", "lora_name")
    return name
