"""Reading JSONL files (one JSON object a line): the one reader of training data and evaluation tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def jsonl_objects(path: str | Path, error: type[Exception], what: str, hint: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``path``.

    A missing, unreadable or empty file, a line that is not JSON or not an object
    raises ``error`` naming ``what`` (``"training data"``), the file and the line
    (``file:N:``), and ``hint`` (what the file should hold).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; give a JSONL file ({hint})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read ({exc}); it must be a UTF-8 JSONL file ({hint})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be "
                        "one JSON object") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise error(f"{what} {path} is empty; add one JSON object a line ({hint})")
    return rows
