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

    # The records the last stages hand each other (dvc.yaml names them as outs and deps)

    @property
    def candidates(self) -> Path:
        """evaluate -> gate, register: each candidate's run, URI and scores."""
        return self.metrics / "candidates.json"

    @property
    def comparison(self) -> Path:
        """evaluate's table of the candidates, as `multitag evaluate` and the flows print it."""
        return self.metrics / "comparison.md"

    @property
    def gate_record(self) -> Path:
        """gate -> register: the verdict and the exact candidate it judged."""
        return self.reports / "gate.json"

    @property
    def gate_report(self) -> Path:
        """The verdict for a person (`multitag gate` prints it)."""
        return self.reports / "gate.md"

    @property
    def registration(self) -> Path:
        """register's result: the versions, the verdict, the champion now."""
        return self.reports / "registration.json"
