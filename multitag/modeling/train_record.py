"""models/<architecture>/train_info.json: what the train stage hands the evaluate and register stages.

How one architecture was trained: its served model's file and size, the weights it started from,
the time of each phase, the best validation mAP, what the last phase trained and how the run
started (cold, warm from the champion, or a quick refit). Written and read here only, as a typed
record (issue 24), without TensorFlow: the stages that read it may not need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from multitag.reports import JsonRecord, write_json

RECORD_FILE = "train_info.json"  # in the architecture's model folder


@dataclass(frozen=True)
class TrainResult(JsonRecord):
    architecture: str
    model_path: str
    input_size: int
    classes: list[str]
    weights: str | None
    train_seconds: float
    feature_seconds: float
    head_seconds: float
    fine_tune_seconds: float
    best_val_mAP: float
    parameters: int
    fine_tune_trainable_parameters: int  # what the last phase trained: a warm start must train what the recipe trains
    start: str  # cold | warm (fine-tuned from the champion) | quick (only its probe, else its head, refitted)

    def write(self, model_dir: Path) -> None:
        write_json(model_dir / RECORD_FILE, self.to_json())

    @classmethod
    def read(cls, model_dir: Path) -> TrainResult:
        return cls.from_json(json.loads((model_dir / RECORD_FILE).read_text()))
