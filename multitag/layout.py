"""Where each stage reads and writes, relative to the project root (DVC outs live here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def synthetic(self) -> Path:
        return self.root / "data" / "raw" / "synthetic"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def frozen_test(self) -> Path:
        return self.root / "data" / "frozen_test.json"

    @property
    def feedback_export(self) -> Path:
        return self.root / "data" / "feedback" / "export"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
