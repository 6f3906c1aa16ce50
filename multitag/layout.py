"""Where each stage reads and writes, relative to the project root (DVC outs live here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        """Downloaded archives and the datasets they extract to."""
        return self.root / "data" / "raw"

    @property
    def synthetic(self) -> Path:
        return self.raw / "synthetic"

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
    def feedback(self) -> Path:
        """The embedded feedback queue (queue.db) and its content-addressed images."""
        return self.root / "data" / "feedback"

    @property
    def feedback_export(self) -> Path:
        return self.feedback / "export"

    @property
    def retrain_log(self) -> Path:
        """Output of retraining runs the API starts as local processes."""
        return self.root / "logs" / "retrain.log"

    @property
    def feature_cache(self) -> Path:
        """Frozen-backbone features by content hash (modeling/feature_cache.py): a cache, safe to delete."""
        return self.root / ".multitag" / "features"

    @property
    def model_cache(self) -> Path:
        """Models downloaded from a remote artefact store, one folder per URI (tracking.download_model): a cache, safe to delete."""
        return self.root / ".multitag" / "downloaded-models"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def dvclive(self) -> Path:
        """DVCLive's folder: `metrics.json` for `dvc metrics show`, `plots/metrics/` for `dvc plots show`."""
        return self.metrics / "dvclive"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
