"""data/processed/summary.json: what the preprocess stage says of the split it wrote.

The dataset the split belongs to (`splits.dataset_key`), the image size and resize mode of the
arrays, the classes, the photos per split and how many test photos are users' corrections. Read
back by preprocessing itself (a split drawn before must not be drawn again silently), by the gate's
evidence (the resize mode of the stored test arrays) and by the model card. Written and read here
only, as a typed record (issue 24), with the JSON it always had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from multitag.reports import JsonRecord, write_json

SUMMARY_FILE = "summary.json"  # in data/processed


@dataclass(frozen=True)
class ProcessedSummary(JsonRecord):
    dataset: str
    image_size: int
    resize: str
    classes: list[str]
    splits: dict[str, int]
    test_from_corrections: int

    def write(self, processed: Path) -> None:
        write_json(processed / SUMMARY_FILE, self.to_json())

    @classmethod
    def read(cls, processed: Path) -> ProcessedSummary | None:
        """The summary of the split in `processed`; None where none was written yet."""
        path = processed / SUMMARY_FILE
        if not path.exists():
            return None
        return cls.from_json(json.loads(path.read_text()))
