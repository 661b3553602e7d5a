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
        return cls("json_schema", json.dumps(schema, sort_keys=True), name)

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

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of a ``json_schema`` grammar (``None`` for the other kinds)."""
        return json.loads(self.source) if self.kind == "json_schema" else None
