"""Printing benchmark results: the one table layout every stress tool uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted with ``spec``, or "-" when it was not measured."""
    return "-" if x is None else format(x, spec)


def table(rows: list[list[str]]) -> str:
    """First column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(" | ".join(cells))
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """A benchmark's JSON result (its folder made), and the line tools and tests look for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
