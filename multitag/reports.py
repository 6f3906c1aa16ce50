"""How the pipeline writes what it reports: JSON files and markdown tables, one way each, so every
stage's output reads (and diffs) alike."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Self


def write_json(path: Path, payload: object) -> Path:
    """`payload` as indented JSON with a final newline (numpy scalars as floats); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return path


class JsonRecord:
    """A dataclass one stage writes as a JSON object of its fields and the next reads back: the
    conversion every such record shares. Reading takes exactly the record's fields, so a file
    missing one fails loudly, and keys the record does not know (a larger dict holding it) are left."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> Self:
        return cls(**{field.name: record[field.name] for field in fields(cls)})


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A GitHub markdown table's lines; cells are written with str()."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]
