"""A folder of images plus a CSV `filename,labels[,split[,absent]]`, labels separated by `|`.

`absent` makes a row's labels partial: the classes confirmed absent, separated by `|` (empty:
none), every other class not in `labels` unknown. Without the column, or with `*` in it, every
class not in `labels` is absent (a full labelling).

Rows are decoded one by one, so a row that is not UTF-8 or is malformed becomes a quarantined
record with its reason instead of failing the whole file or disappearing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from multitag.config import DataParams
from multitag.data.manifest import Record, SourceData, normalize_labels
from multitag.data.sources.layout_errors import require
from multitag.errors import UsageError

LAYOUT = (
    "labels.csv (filename,labels[,split[,absent]]; labels separated by '|', absent '*' or empty for a full labelling), "
    "image files relative to it, optional classes.txt"
)
FULL = "*"  # in the absent column: every class not in labels is absent


def read(root: Path, params: DataParams) -> SourceData:
    """Read `root/labels.csv`; the class list comes from classes.txt, else from the labels seen."""
    csv_path = root if root.suffix == ".csv" else root / "labels.csv"
    require(csv_path, "labels CSV", LAYOUT)
    base = csv_path.parent
    records = [_record(base, row) for row in read_rows(csv_path)]
    classes_file = base / "classes.txt"
    if classes_file.exists():
        classes = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
    else:
        classes = sorted({label for r in records if not r.problems for label in r.labels})
    return SourceData(records, classes)


def read_synthetic(root: Path, params: DataParams) -> SourceData:
    """Generate the shapes dataset into `root` (skipped when already there), then read it."""
    from multitag.data.sources import synthetic

    synthetic.generate(root, params.synthetic.n_images, params.synthetic.image_size, params.synthetic.seed)
    data = read(root, params)
    for record in data.records:
        record.source = "synthetic"
    return data


@dataclass(frozen=True)
class CsvRow:
    """One data row of a labels CSV, or why it cannot be read (`problem`, 'bad_csv_row: ...')."""

    line: int
    filename: str
    labels: list[str] = field(default_factory=list)
    split: str = ""
    problem: str | None = None
    absent: list[str] | None = None  # None: every class not in labels is absent


def read_rows(csv_path: Path) -> Iterator[CsvRow]:
    """Each data row of `filename,labels[,split]`, header checked, decoded one by one so one bad
    row is reported instead of failing the whole file (the feedback importer reads the same)."""
    lines = csv_path.read_bytes().splitlines()
    header = lines[0].decode("utf-8-sig", errors="replace").strip().lower() if lines else ""
    if not header.startswith("filename"):
        raise UsageError(f"{csv_path}: the first line must be the header 'filename,labels', got {header!r}; the layout is {LAYOUT}")
    for line, raw in enumerate(lines[1:], start=2):
        if raw.strip():
            yield _parse(line, raw)


def _parse(line: int, raw: bytes) -> CsvRow:
    try:
        fields = next(csv.reader(io.StringIO(raw.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        name = raw.split(b",")[0].decode("utf-8", errors="replace")
        return CsvRow(line, name, problem=f"bad_csv_row: line {line} is not UTF-8 or not CSV ({err})")
    filename = fields[0].strip() if fields else ""
    if len(fields) < 2 or not filename:
        return CsvRow(line, filename, problem=f"bad_csv_row: line {line} has no {'labels column' if filename else 'filename'}")
    split = fields[2].strip().lower() if len(fields) > 2 else ""
    labels = normalize_labels(fields[1].split("|"))
    absent = normalize_labels(fields[3].split("|")) if len(fields) > 3 and fields[3].strip() != FULL else None
    if both := sorted(set(labels) & set(absent or ())):
        return CsvRow(line, filename, problem=f"bad_csv_row: line {line} marks {', '.join(both)} both present and absent")
    return CsvRow(line, filename, labels, split, absent=absent)


def _record(base: Path, row: CsvRow) -> Record:
    """One CSV row as a record; an unreadable row carries its problem instead of labels."""
    path = str(base / row.filename) if row.filename else ""
    if row.problem:
        return Record(f"row{row.line}", path, [], problems=[row.problem])
    return Record(Path(row.filename).stem, path, row.labels, row.split, "csv", absent=row.absent)
