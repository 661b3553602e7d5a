"""OpenAI's ``response_format`` on ``/v1/chat/completions`` and ``/v1/completions``, as a request's grammar.

``{"type": "text"}`` (or none): free text; ``{"type": "json_object"}``: one JSON
object; ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``:
one JSON value valid against ``schema``, enforced token by token
(``strict`` false is enforced as well: the engine never does less than asked).
The mapping itself is :meth:`Grammar.from_response_format
<adaptrix.generation.grammar.Grammar.from_response_format>`, the library's too; a
schema the grammar engine cannot enforce is refused here with a 400 naming the
keyword, before the request is queued.
"""

from __future__ import annotations

from typing import Any

from adaptrix.errors import GenerationError
from adaptrix.generation.grammar import Grammar
from adaptrix.generation.matcher import check_grammar
from adaptrix.serve.errors import ApiError


def parse_response_format(body: dict[str, Any]) -> Grammar | None:
    """The grammar of the body's ``response_format`` (``None``: free text); :class:`ApiError` 400 naming the
    field at fault (``response_format.json_schema.schema`` for a keyword that cannot be enforced)."""
    value = body.get("response_format")
    try:
        grammar = Grammar.from_response_format(value)
    except GenerationError as exc:
        message = str(exc)
        param = "response_format.json_schema" if "json_schema" in message else "response_format"
        for part in ("name", "schema"):
            if f"response_format.json_schema.{part}" in message:
                param = f"response_format.json_schema.{part}"
        raise ApiError(400, message, param=param, code="invalid_value") from None
    if grammar is None:
        return None
    try:
        check_grammar(grammar)
    except GenerationError as exc:
        param = "response_format.json_schema.schema" if grammar.kind == "json_schema" else "response_format"
        raise ApiError(400, f"'{param}': {exc}", param=param, code="unsupported_schema") from None
    return grammar
