"""``--json-schema FILE`` and ``--json-object``: structured output for ``adaptrix generate`` and ``adaptrix chat``.

The schema file is read before the model loads, so a missing file or bad JSON
fails at once, naming the file; a keyword the grammar engine cannot enforce is
refused by the engine, naming the keyword (docs/structured-output.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptrix.errors import GenerationError
from adaptrix.generation.grammar import Grammar
from adaptrix.generation.matcher import check_grammar


def add_grammar_args(p) -> None:
    """The mutually exclusive ``--json-schema FILE`` / ``--json-object`` options."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json-schema", metavar="FILE",
                       help="answer with JSON valid against the JSON schema in FILE (enforced token by token)")
    group.add_argument("--json-object", action="store_true", help="answer with one JSON object")


def grammar_option(args) -> dict[str, Any]:
    """``{"grammar": Grammar}`` for the command's options, ``{}`` when neither is given."""
    if getattr(args, "json_object", False):
        return {"grammar": Grammar.json_object()}
    path = getattr(args, "json_schema", None)
    if path is None:
        return {}
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationError(f"--json-schema {file}: cannot read it ({exc}); give a JSON schema file") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise GenerationError(f"--json-schema {file} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GenerationError(f"--json-schema {file} must hold a JSON object (a schema), got {type(schema).__name__}")
    grammar = Grammar.json_schema(schema, file.stem)
    try:
        check_grammar(grammar)
    except GenerationError as exc:
        raise GenerationError(f"--json-schema {file}: {exc}") from None
    return {"grammar": grammar}
