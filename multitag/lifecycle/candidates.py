"""metrics/candidates.json: what the evaluate stage hands the gate and register stages.

The models `evaluate` logged, each with its comparison row, and the data and code they were
scored on. Written and read here only, as typed records (issue 24); the JSON layout is the one
the stages always wrote, so a workspace evaluated before reads the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from multitag.reports import write_json

IDENTITY = ("architecture", "run_id", "model_uri")


@dataclass(frozen=True)
class Candidate:
    """One logged model: its architecture, MLflow run and model URI, and its comparison row's other
    columns (val_mAP, test_mAP, test_macro_f1, latency_ms, size_mb, parameters, ...)."""

    architecture: str
    run_id: str
    model_uri: str
    scores: dict[str, float | int | None]

    def to_json(self) -> dict:
        return {"architecture": self.architecture, "run_id": self.run_id, "model_uri": self.model_uri, **self.scores}

    @classmethod
    def from_json(cls, row: dict) -> Candidate:
        return cls(*(row[key] for key in IDENTITY), scores={k: v for k, v in row.items() if k not in IDENTITY})


@dataclass(frozen=True)
class Candidates:
    """The evaluate stage's record: its MLflow parent run, the DVC hash of the data and the commit
    of the code every candidate was scored with, and the candidates."""

    parent_run_id: str
    data_hash: str
    git_commit: str
    candidates: list[Candidate]

    def identity(self, candidate: Candidate) -> dict[str, str]:
        """What a verdict is about: the exact logged model (run id and URI) and the data it was scored on."""
        return {"run_id": candidate.run_id, "model_uri": candidate.model_uri, "data_hash": self.data_hash}

    def to_json(self) -> dict:
        return {
            "parent_run_id": self.parent_run_id,
            "data_hash": self.data_hash,
            "git_commit": self.git_commit,
            "candidates": [candidate.to_json() for candidate in self.candidates],
        }

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Candidates:
        record = json.loads(path.read_text())
        return cls(
            record["parent_run_id"],
            record["data_hash"],
            record["git_commit"],
            [Candidate.from_json(row) for row in record["candidates"]],
        )
