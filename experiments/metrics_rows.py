"""The rows of a ``metrics.jsonl``, read the same way by a resume and by the scripts.

A row is a line holding a JSON object whose ``step`` is a whole, finite number. Anything else (the
torn last line of a killed run, a line that is not UTF-8, JSON that is not an object, a step of
``Infinity``) is not a row: readers skip it and say how many they skipped. This module imports
nothing heavy, so that ``scripts/`` can use it without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Rows:
    """The rows of a file, each with its line as written, and how many lines were not rows."""

    rows: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    not_rows: int = 0

    def note(self, path: Path) -> str | None:
        """The sentence that says what was skipped, or ``None`` when nothing was."""
        if not self.not_rows:
            return None
        lines = "line that is" if self.not_rows == 1 else "lines that are"
        return (f"{path}: skipped {self.not_rows} {lines} not a metrics row (a JSON object with a finite "
                "integer step: a torn last line of a killed run, or text the run did not write)")


def parse_row(line: bytes) -> dict[str, Any] | None:
    """The row on ``line``, or ``None`` when it is not one."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(row, dict):
        return None
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        return None
    return row if step == int(step) else None


def read_rows(path: Path) -> Rows:
    """The rows of ``path`` (none when it does not exist)."""
    found = Rows()
    if not path.exists():
        return found
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        row = parse_row(line)
        if row is None:
            found.not_rows += 1
        else:
            found.rows.append((line, row))
    return found
