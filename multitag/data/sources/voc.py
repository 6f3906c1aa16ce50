"""Pascal VOC layout (VOC2007, VOC2012): Annotations/*.xml, JPEGImages/, ImageSets/Main/*.txt.

An image's labels are the set of object classes in its XML. A class seen only on `difficult`
objects counts as present unless `data.voc_difficult_counts` is false.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from multitag.config import DataParams
from multitag.data.manifest import Record, SourceData
from multitag.data.sources.layout_errors import require

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
LAYOUT = "Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{train,val,trainval,test}.txt"
SPLIT_FILES = {"train": "train", "val": "val", "test": "test"}


def read(root: Path, params: DataParams) -> SourceData:
    """Read a VOC year folder (the one holding Annotations/), e.g. VOCdevkit/VOC2012."""
    root = _find_year_root(root)
    annotations = require(root / "Annotations", "VOC annotations folder", LAYOUT)
    splits = _split_of_each_id(root / "ImageSets" / "Main")
    records = []
    for xml_path in sorted(annotations.glob("*.xml")):
        image_id = xml_path.stem
        labels, problems = parse_labels(xml_path, params.voc_difficult_counts)
        records.append(
            Record(
                image_id=image_id,
                path=str(root / "JPEGImages" / f"{image_id}.jpg"),
                labels=labels,
                split=splits.get(image_id, ""),
                source="voc",
                problems=problems,
            )
        )
    for image_id in sorted(set(splits) - {r.image_id for r in records}):
        records.append(
            Record(
                image_id,
                str(root / "JPEGImages" / f"{image_id}.jpg"),
                [],
                splits[image_id],
                "voc",
                problems=[f"missing_annotation: {image_id} is listed in ImageSets/Main but Annotations/{image_id}.xml does not exist"],
            )
        )
    return SourceData(records, list(VOC_CLASSES))


def _find_year_root(root: Path) -> Path:
    """Accept the year folder itself or a VOCdevkit folder holding exactly one year."""
    if (root / "Annotations").exists():
        return root
    years = sorted(p for p in root.glob("VOC*") if (p / "Annotations").exists())
    if len(years) == 1:
        return years[0]
    return root


def parse_labels(xml_path: Path, difficult_counts: bool) -> tuple[list[str], list[str]]:
    """The distinct class names of an annotation file, plus problems found while parsing."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        return [], [f"bad_annotation: {err}"]
    present, difficult_only = set(), set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            continue
        if (obj.findtext("difficult") or "0").strip() == "1":
            difficult_only.add(name)
        else:
            present.add(name)
    if difficult_counts:
        present |= difficult_only
    return sorted(present), []


def _split_of_each_id(main_dir: Path) -> dict[str, str]:
    """Map image id -> split from ImageSets/Main; `test` wins over train/val if listed twice."""
    splits: dict[str, str] = {}
    for split in ("train", "val", "test"):
        list_file = main_dir / f"{SPLIT_FILES[split]}.txt"
        if not list_file.exists():
            continue
        for line in list_file.read_text().split():
            if splits.get(line) != "test":
                splits[line] = split
    if not splits and (main_dir / "trainval.txt").exists():
        splits = {line: "" for line in (main_dir / "trainval.txt").read_text().split()}
    return splits
