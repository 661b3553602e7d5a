"""What a constrained row may generate: :class:`Grammar`, one value object for every backend.

A grammar is given in one of llguidance's forms (the grammar engine compiles it
into a token mask per step; see ``docs/structured-output.md``):

- ``json_schema``: ``source`` is a JSON Schema as JSON text (the output is one
  JSON value that validates against it);
- ``json_object``: any JSON object (OpenAI's ``response_format: json_object``);
- ``lark``: a Lark grammar, which may embed a schema with ``%json{...}`` (tool
  calls in a family's own format: literal tags around a JSON call).

This module only describes the constraint; enforcing it is the backends' job.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from adaptrix.errors import GenerationError

KINDS = ("json_schema", "json_object", "lark")


@attrs.frozen
class Grammar:
    """A constraint on a row's output. Build with :meth:`json_schema`, :meth:`json_object` or :meth:`lark`."""

    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    #: The schema as JSON text (``json_schema``), ``""`` (``json_object``) or the Lark text (``lark``).
    source: str = ""
    #: A name for messages and metrics (the OpenAI ``json_schema.name``, a tool's name).
    name: str | None = None

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str, name: str | None = None) -> "Grammar":
        """Output is one JSON value valid against ``schema`` (a dict or JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise GenerationError(f"json schema {name or ''} is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise GenerationError(f"a JSON schema must be an object, got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema), name)  # key order kept: properties are written in it

    @classmethod
    def json_object(cls) -> "Grammar":
        """Output is one JSON object, any keys."""
        return cls("json_object", "")

    @classmethod
    def lark(cls, text: str, name: str | None = None) -> "Grammar":
        """Output matches a Lark grammar (llguidance's dialect: ``start`` rule, ``%json{...}`` embeds a schema)."""
        if not isinstance(text, str) or not text.strip():
            raise GenerationError("a lark grammar must be non-empty text with a 'start' rule")
        return cls("lark", text, name)

    @classmethod
    def from_response_format(cls, response_format: Any, field: str = "response_format") -> "Grammar | None":
        """The grammar of OpenAI's ``response_format`` (``None`` for ``{"type": "text"}``): ``{"type":
        "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``. The one
        mapping from that field, for the library and the server; errors name ``field`` and the part at fault."""
        if response_format is None:
            return None
        if not isinstance(response_format, dict):
            raise GenerationError(f"{field} must be an object such as {{'type': 'json_object'}}, got "
                                  f"{type(response_format).__name__}")
        kind = response_format.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls.json_object()
        if kind != "json_schema":
            raise GenerationError(f"{field}.type must be 'text', 'json_object' or 'json_schema', got {kind!r}")
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise GenerationError(f"{field}.json_schema must be an object {{'name', 'schema', 'strict'}}, got "
                                  f"{spec!r}")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise GenerationError(f"{field}.json_schema.name must be a string, got {name!r}")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise GenerationError(f"{field}.json_schema.schema must be a JSON schema object, got "
                                  f"{type(schema).__name__}")
        return cls.json_schema(schema, name)

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of a ``json_schema`` grammar (``None`` for the other kinds)."""
        return json.loads(self.source) if self.kind == "json_schema" else None
