"""A folder of images plus a CSV `filename,labels[,split]`, labels separated by `|`.

Rows are decoded one by one, so a row that is not UTF-8 or is malformed becomes a quarantined
record with its reason instead of failing the whole file or disappearing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from multitag.config import DataParams
from multitag.data.manifest import Record, SourceData
from multitag.data.sources import require

LAYOUT = "labels.csv (filename,labels[,split]; labels separated by '|'), image files relative to it, optional classes.txt"


def read(root: Path, params: DataParams) -> SourceData:
    """Read `root/labels.csv`; the class list comes from classes.txt, else from the labels seen."""
    csv_path = root if root.suffix == ".csv" else root / "labels.csv"
    require(csv_path, "labels CSV", LAYOUT)
    base = csv_path.parent
    records = [_record(base, number, raw) for number, raw in _rows(csv_path)]
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


def _rows(csv_path: Path):
    """Yield (line number, raw bytes) of each data row, header skipped."""
    lines = csv_path.read_bytes().splitlines()
    header = lines[0].decode("utf-8-sig", errors="replace").strip().lower() if lines else ""
    if not header.startswith("filename"):
        raise ValueError(f"{csv_path}: first line must be the header 'filename,labels', got {header!r}")
    for number, raw in enumerate(lines[1:], start=2):
        if raw.strip():
            yield number, raw


def _record(base: Path, number: int, raw: bytes) -> Record:
    """One CSV row as a record; undecodable or short rows carry a problem instead of labels."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        name = raw.split(b",")[0].decode("utf-8", errors="replace")
        return Record(f"row{number}", str(base / name), [], problems=[f"bad_csv_row: line {number} is not UTF-8 ({err.reason})"])
    fields = next(csv.reader(io.StringIO(text)))
    if len(fields) < 2:
        return Record(
            f"row{number}", str(base / fields[0]) if fields else "", [], problems=[f"bad_csv_row: line {number} has no labels column"]
        )
    filename, label_text = fields[0].strip(), fields[1]
    labels = sorted({label.strip() for label in label_text.split("|") if label.strip()})
    split = fields[2].strip().lower() if len(fields) > 2 else ""
    return Record(Path(filename).stem, str(base / filename), labels, split, "csv")
