"""COCO readers: the official instances JSON, and the YOLO / COCO128 layout.

Either way an image's labels are the distinct category names of its objects; an image with no
objects gets an empty label set (validation decides whether that is allowed).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from multitag.config import DataParams
from multitag.data.manifest import Record, SourceData
from multitag.data.sources.layout_errors import require

JSON_LAYOUT = "annotations/instances_<split>.json with images in <split>/ or images/<split>/"
YOLO_LAYOUT = "images/<subset>/*.jpg, labels/<subset>/*.txt, classes.txt (one name per line)"


def split_from_name(name: str) -> str:
    """train2017 -> train, val2014 -> val, test-dev -> test; anything else is unsplit."""
    for split in ("train", "val", "test"):
        if name.lower().startswith(split):
            return split
    return ""


def read_instances_json(root: Path, params: DataParams) -> SourceData:
    """Read every `annotations/instances_*.json` under root into one manifest."""
    files = sorted(require(root / "annotations", "COCO annotations folder", JSON_LAYOUT).glob("instances_*.json"))
    if not files:
        require(root / "annotations" / "instances_train2017.json", "COCO instances file", JSON_LAYOUT)
    records: list[Record] = []
    classes: list[str] = []
    for json_path in files:
        subset = json_path.stem.removeprefix("instances_")
        file_records, file_classes = _read_one_json(json_path, _image_dir(root, subset), split_from_name(subset))
        records += file_records
        classes += [c for c in file_classes if c not in classes]
    return SourceData(records, classes)


def _image_dir(root: Path, subset: str) -> Path:
    for candidate in (root / subset, root / "images" / subset):
        if candidate.exists():
            return candidate
    return root / "images" / subset


def _read_one_json(json_path: Path, image_dir: Path, split: str) -> tuple[list[Record], list[str]]:
    """One instances file: images, their category names, and the ordered category list."""
    coco = json.loads(json_path.read_text())
    categories = {c["id"]: c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])}
    labels_of: dict[int, set[str]] = defaultdict(set)
    problems_of: dict[int, list[str]] = defaultdict(list)
    for ann in coco.get("annotations", []):
        name = categories.get(ann["category_id"])
        if name is None:
            problems_of[ann["image_id"]].append(f"unknown_class: category id {ann['category_id']}")
        else:
            labels_of[ann["image_id"]].add(name)
    records = [
        Record(
            image_id=Path(image["file_name"]).stem,
            path=str(image_dir / image["file_name"]),
            labels=sorted(labels_of[image["id"]]),
            split=split,
            source="coco",
            problems=problems_of[image["id"]],
        )
        for image in coco["images"]
    ]
    return records, list(categories.values())


def read_yolo(root: Path, params: DataParams) -> SourceData:
    """YOLO layout: one label file per image, `class_id cx cy w h` per object line."""
    classes_file = require(root / "classes.txt", "class list", YOLO_LAYOUT)
    classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    subsets = sorted(p for p in require(root / "images", "images folder", YOLO_LAYOUT).iterdir() if p.is_dir())
    single = len(subsets) <= 1
    records = []
    for subset in subsets or [root / "images"]:
        split = "" if single else split_from_name(subset.name)
        label_dir = root / "labels" if subset == root / "images" else root / "labels" / subset.name
        for image_path in sorted(p for p in subset.iterdir() if p.is_file()):
            label_path = label_dir / f"{image_path.stem}.txt"
            labels, problems = _yolo_labels(label_path, classes)
            records.append(Record(image_path.stem, str(image_path), labels, split, "yolo", problems=problems))
    return SourceData(records, classes)


def _yolo_labels(label_path: Path, classes: list[str]) -> tuple[list[str], list[str]]:
    """Distinct class names in a YOLO label file; a missing file means no objects."""
    if not label_path.exists():
        return [], []
    names, problems = set(), []
    for number, line in enumerate(label_path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            class_id = int(fields[0])
            if not 0 <= class_id < len(classes):
                raise IndexError(class_id)
            names.add(classes[class_id])
        except (ValueError, IndexError):
            problems.append(f"unknown_class: line {number} of {label_path.name} has class id {fields[0]!r}")
    return sorted(names), problems
