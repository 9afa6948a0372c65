"""What the export port's row writers are told about each column."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    """One exported column: its name and kind (str, int, float, bool, time or json)."""

    name: str
    kind: str
