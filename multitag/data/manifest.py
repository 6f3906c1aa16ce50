"""The manifest: one table that every stage after ingestion reads.

Columns (DESIGN.md): image_id, path, sha256, width, height, labels (list of class names),
split, source, and unknown (the classes whose presence nobody confirmed: partial labels, train
only; empty for a fully labelled image). Readers fill what the annotations say (id, path, labels,
split, source, absent); the validation stage opens each file once and fills sha256, width and
height, and turns `absent` into `unknown` with the final class list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from multitag.errors import MissingInputError, UsageError
from multitag.reports import write_json

COLUMNS = ["image_id", "path", "sha256", "width", "height", "labels", "split", "source", "unknown"]
UNKNOWN = 255  # the label-matrix entry of a class whose presence is unknown (train only): the loss masks it
SPLITS = ("train", "val", "test")
FEEDBACK_SOURCE = "feedback"  # the `source` of rows that are users' corrections (multitag.feedback.retraining)
UNSPLIT = ""  # the source gave no split for this image: preprocessing assigns one


@dataclass
class Record:
    """One image as a source reader sees it; sha256/width/height are filled by validation."""

    image_id: str
    path: str
    labels: list[str]
    split: str = UNSPLIT
    source: str = ""
    sha256: str = ""
    width: int = 0
    height: int = 0
    problems: list[str] = field(default_factory=list)  # reader-level problems, e.g. unknown class
    absent: list[str] | None = None  # None: every class not in labels is absent; a list: only these, the others unknown


@dataclass
class SourceData:
    """What a reader returns: the records and the ordered class list they are labelled with."""

    records: list[Record]
    classes: list[str]


def normalize_labels(labels: Iterable[str]) -> list[str]:
    """Strip, drop empties, deduplicate and sort: the one form a label set is stored and compared in."""
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of class names, not the string {labels!r}")
    return sorted({label.strip() for label in labels if label.strip()})


def unknown_classes(record: Record, classes: list[str]) -> list[str]:
    """The classes of `classes` that `record` neither labels present nor confirms absent (none when
    it is labelled in full), in class-list order."""
    if record.absent is None:
        return []
    return [name for name in classes if name not in record.labels and name not in record.absent]


def to_frame(records: Iterable[Record], classes: list[str]) -> pd.DataFrame:
    """Records to a manifest DataFrame with the contract's columns, in order; `unknown` follows `classes`
    (the final class list: a partial record's unknown classes are those it neither labels nor rules out)."""
    rows = [{**{k: v for k, v in asdict(r).items() if k in COLUMNS}, "unknown": unknown_classes(r, classes)} for r in records]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"width": "int64", "height": "int64"})


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write the manifest as parquet (labels stay a list column)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[COLUMNS].to_parquet(path, index=False)
    return path


def read(path: Path) -> pd.DataFrame:
    """Read a manifest written by `write`, with labels as Python lists of str."""
    if not Path(path).exists():
        raise MissingInputError(f"manifest {path} not found: run `multitag data validate` first")
    frame = pd.read_parquet(path)
    if "unknown" not in frame:  # a manifest from before partial labels: everything labelled in full
        frame["unknown"] = [[] for _ in range(len(frame))]
    for column in ("labels", "unknown"):
        frame[column] = frame[column].map(lambda xs: [str(x) for x in xs])
    return frame


def apply_class_subset(data: SourceData, classes: list[str] | None, drop_unlabeled: bool) -> SourceData:
    """Keep only `classes` (in the given order); optionally drop images left with no label.

    Unknown names in `classes` are an error, since a typo would silently train on nothing.
    """
    if classes is None:
        return data
    unknown = sorted(set(classes) - set(data.classes))
    if unknown:
        raise UsageError(f"data.classes names {unknown}, which the dataset does not have; its classes are: {', '.join(data.classes)}")
    keep = set(classes)
    kept: list[Record] = []
    for record in data.records:
        filtered = [label for label in record.labels if label in keep or label not in data.classes]
        if drop_unlabeled and not filtered and not record.problems:
            continue
        record.labels = filtered
        kept.append(record)
    return SourceData(kept, list(classes))


def write_classes(classes: list[str], path: Path) -> Path:
    """classes.json: the ordered class list that columns of every label matrix follow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, classes)
    return path


def read_classes(path: Path) -> list[str]:
    return json.loads(Path(path).read_text())


def label_matrix(labels: Iterable[list[str]], classes: list[str], unknown: Iterable[list[str]] | None = None):
    """Multi-hot uint8 matrix (N, C) in `classes` order; labels outside `classes` are ignored.
    With `unknown` (one list per row), those entries are UNKNOWN instead of 0."""
    import numpy as np

    index = {name: i for i, name in enumerate(classes)}
    rows = list(labels)
    matrix = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for row, names in enumerate(rows):
        for name in names:
            if name in index:
                matrix[row, index[name]] = 1
    for row, names in enumerate(unknown if unknown is not None else ()):
        for name in names:
            if name in index:
                matrix[row, index[name]] = UNKNOWN
    return matrix
