"""What every dataset reader says when a path does not hold the layout it reads: the reader
modules import this, and the package (sources/__init__.py) imports the readers, never the reverse."""

from __future__ import annotations

from pathlib import Path

from multitag.errors import MultitagError


class DatasetLayoutError(MultitagError, FileNotFoundError):
    """The dataset path does not hold the layout the chosen reader expects."""


def require(path: Path, what: str, layouts: str) -> Path:
    """Return `path` if it exists, else raise an error naming it and the layouts looked for."""
    if not path.exists():
        raise DatasetLayoutError(
            f"{path} not found ({what}). Looked for: {layouts}. "
            "Check data.path / data.source in params.yaml, or run `multitag data download`."
        )
    return path
