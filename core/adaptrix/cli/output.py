"""Readable tables for people, JSON for machines."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any, Iterable, Sequence


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused with argparse's clear usage error)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def print_json(data: Any, file=None) -> None:
    json.dump(data, file or sys.stdout, indent=2, default=str)
    (file or sys.stdout).write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]], max_width: int | None = None) -> str:
    """Columns are ``(key, header)``. Long cells are cut to fit the terminal."""
    rows = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    headers = [h for _, h in columns]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    limit = max_width or shutil.get_terminal_size((160, 20)).columns
    # Shrink the widest column until the table fits (never below 12 characters).
    while sum(widths) + 2 * (len(widths) - 1) > limit:
        i = max(range(len(widths)), key=lambda k: widths[k])
        if widths[i] <= 12:
            break
        widths[i] -= 1

    def fit(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["  ".join(fit(h, w).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(fit(c, w).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def print_table(rows, columns, file=None) -> None:
    print(format_table(rows, columns), file=file or sys.stdout)


def print_pairs(pairs: Sequence[tuple[str, Any]], file=None) -> None:
    """A two-column "key: value" block."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {_cell(value)}", file=file or sys.stdout)
