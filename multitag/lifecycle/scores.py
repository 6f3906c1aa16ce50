"""Each model's answers on the labelled photos it was scored on, stored inside the logged model's
folder (`evaluation/scores.parquet`), so its URI, and every registry version made from it, carry them.

Why: without them the gate scored the same frozen test photos through the same models again,
the candidate right after `evaluate` had scored it and the champion every night (on voc-real,
with flips and the 384 px probe, about 110 ms a photo a model on 2 cores: most of a quick
retraining). Now the gate scores only the test photos a model has never seen (corrections that
joined the split since), and the results browser reads each photo's scores and labels per version.

A stored row is reused only for the same photo bytes (sha256) at the same input size and resize
mode, the three things a model's input pixels depend on, and only for the same class list.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SCORES_DIR = "evaluation"  # inside the logged model's folder
SCORES_FILE = "scores.parquet"
META_KEY = b"multitag"


@dataclass(frozen=True)
class ScoreTable:
    """One row per scored photo: sha256, split, image_id, path, labels (true) and scores (per class)."""

    classes: list[str]
    image_size: int
    resize: str
    frame: pd.DataFrame

    def scores_for(self, hashes: list[str], classes: list[str], image_size: int, resize: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) scores aligned with `hashes` and a mask of the rows found; none are found when the
        table was scored on other pixels (size, resize) or for another class list."""
        scores = np.full((len(hashes), len(classes)), np.nan)
        if (self.classes, self.image_size, self.resize) != (classes, image_size, resize) or self.frame.empty:
            return scores, np.zeros(len(hashes), dtype=bool)
        by_hash = dict(zip(self.frame["sha256"], self.frame["scores"]))
        found = np.array([sha in by_hash for sha in hashes], dtype=bool)
        for row in np.flatnonzero(found):
            scores[row] = by_hash[hashes[row]]
        return scores, found


def table(rows: pd.DataFrame, scores: np.ndarray, classes: list[str], image_size: int, resize: str) -> ScoreTable:
    """The table of manifest `rows` (sha256, split, image_id, path, labels) and their (N, C) scores."""
    frame = rows[["sha256", "split", "image_id", "path", "labels"]].reset_index(drop=True).copy()
    frame["labels"] = frame["labels"].map(list)
    frame["scores"] = [list(map(float, row)) for row in np.asarray(scores, dtype="float64")]
    return ScoreTable(list(classes), int(image_size), str(resize), frame)


def write(scores: ScoreTable, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"classes": scores.classes, "image_size": scores.image_size, "resize": scores.resize}
    arrow = pa.Table.from_pandas(scores.frame, preserve_index=False)
    pq.write_table(arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), META_KEY: json.dumps(meta)}), path)
    return path


def read(path: Path) -> ScoreTable | None:
    """The table at `path`, or None where there is none (a model logged before tables existed)."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    arrow = pq.read_table(path)
    meta = json.loads(arrow.schema.metadata[META_KEY])
    return ScoreTable(list(meta["classes"]), int(meta["image_size"]), str(meta["resize"]), arrow.to_pandas())


def stored(model_folder: Path) -> ScoreTable | None:
    """The table logged inside a downloaded model's folder, if any."""
    return read(model_folder / SCORES_DIR / SCORES_FILE)


def log_with_model(model_uri: str, scores: ScoreTable) -> None:
    """Store the table inside the logged model at `model_uri` (a runs:/ URI)."""
    from multitag.lifecycle.tracking import log_model_files

    with tempfile.TemporaryDirectory() as tmp:
        log_model_files(model_uri, [write(scores, Path(tmp) / SCORES_FILE)], SCORES_DIR)
