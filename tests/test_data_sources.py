"""Code tests of the dataset readers: VOC XML, COCO instances JSON, YOLO and folder+CSV layouts,
the class subset, and the error a wrong dataset path gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus import csv_row, encode, solid, voc_xml, write_bytes, write_csv, write_voc

from multitag.config import DataParams, ValidateParams
from multitag.data.sources import DatasetLayoutError, coco, csv_folder, read_source, voc
from multitag.data.validation import validate


def by_id(data) -> dict:
    return {record.image_id: record for record in data.records}


def jpeg(name: str) -> bytes:
    return encode(solid(name), "JPEG")


# --------------------------------------------------------------------------------------------
# Pascal VOC
# --------------------------------------------------------------------------------------------


@pytest.fixture
def voc_root(tmp_path) -> Path:
    items = {
        "plain": [("cat", 0), ("cat", 0), ("dog", 0)],
        "hard_dog": [("cat", 0), ("dog", 1)],  # dog only on a difficult object
        "mixed_dog": [("dog", 1), ("dog", 0)],  # dog both difficult and not
        "only_hard": [("bird", 1)],
        "spaced": [("  person\n", 0)],
        "unlisted": [("cow", 0)],
    }
    splits = {"train": ["plain", "hard_dog"], "val": ["mixed_dog", "spaced"], "test": ["only_hard", "plain"]}
    return write_voc(tmp_path / "VOC2012", {i: (jpeg(i), voc_xml(f"{i}.jpg", objs)) for i, objs in items.items()}, splits)


def test_voc_labels_are_the_distinct_classes_and_difficult_counts_by_default(voc_root):
    records = by_id(read_source(DataParams(source="voc", path=voc_root)))
    assert {i: r.labels for i, r in records.items()} == {
        "plain": ["cat", "dog"],
        "hard_dog": ["cat", "dog"],
        "mixed_dog": ["dog"],
        "only_hard": ["bird"],
        "spaced": ["person"],
        "unlisted": ["cow"],
    }
    assert all(not r.problems and r.source == "voc" for r in records.values())
    assert records["plain"].path == str(voc_root / "JPEGImages" / "plain.jpg")


def test_voc_difficult_only_classes_are_dropped_when_configured(voc_root):
    records = by_id(read_source(DataParams(source="voc", path=voc_root, voc_difficult_counts=False)))
    assert records["hard_dog"].labels == ["cat"]
    assert records["mixed_dog"].labels == ["dog"]
    assert records["only_hard"].labels == []


def test_voc_splits_come_from_image_sets_and_test_wins(voc_root):
    records = by_id(read_source(DataParams(source="voc", path=voc_root)))
    assert {i: r.split for i, r in records.items()} == {
        "plain": "test",  # listed in train.txt and test.txt
        "hard_dog": "train",
        "mixed_dog": "val",
        "spaced": "val",
        "only_hard": "test",
        "unlisted": "",
    }


def test_voc_class_list_is_the_twenty_voc_classes(voc_root):
    data = read_source(DataParams(source="voc", path=voc_root))
    assert len(data.classes) == 20 and data.classes[0] == "aeroplane" and data.classes[-1] == "tvmonitor"
    assert {"cat", "dog", "bird", "person", "cow"} <= set(data.classes)


def test_voc_accepts_a_vocdevkit_folder_and_trainval_only_means_unsplit(tmp_path):
    year = write_voc(tmp_path / "VOCdevkit" / "VOC2007", {"a": (jpeg("a"), voc_xml("a.jpg", [("cat", 0)]))}, {"trainval": ["a"]})
    records = read_source(DataParams(source="voc", path=tmp_path / "VOCdevkit")).records
    assert [(r.image_id, r.split, r.path) for r in records] == [("a", "", str(year / "JPEGImages" / "a.jpg"))]


# --------------------------------------------------------------------------------------------
# COCO instances JSON
# --------------------------------------------------------------------------------------------


def write_instances(root: Path, subset: str, images: dict[int, str], annotations: list[tuple[int, int]]) -> None:
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]  # unordered ids
    document = {
        "images": [{"id": i, "file_name": name, "width": 16, "height": 16} for i, name in images.items()],
        "annotations": [{"id": n, "image_id": i, "category_id": c, "bbox": [1, 1, 2, 2]} for n, (i, c) in enumerate(annotations)],
        "categories": categories,
    }
    write_bytes(root / "annotations" / f"instances_{subset}.json", json.dumps(document).encode())


def test_coco_instances_json(tmp_path):
    for name in ("a", "b", "c"):
        write_bytes(tmp_path / "train2017" / f"{name}.jpg", jpeg(name))
    write_bytes(tmp_path / "images" / "val2017" / "d.jpg", jpeg("d"))
    write_instances(tmp_path, "train2017", {1: "a.jpg", 2: "b.jpg", 3: "c.jpg"}, [(1, 18), (1, 18), (1, 1), (3, 99), (3, 3)])
    write_instances(tmp_path, "val2017", {7: "d.jpg"}, [(7, 3)])
    data = read_source(DataParams(source="coco", path=tmp_path))
    assert data.classes == ["person", "car", "dog"], "category order is by id"
    records = by_id(data)
    assert {i: (r.labels, r.split) for i, r in records.items()} == {
        "a": (["dog", "person"], "train"),
        "b": ([], "train"),
        "c": (["car"], "train"),
        "d": (["car"], "val"),
    }
    assert records["c"].problems and records["c"].problems[0].startswith("unknown_class")
    assert records["a"].path == str(tmp_path / "train2017" / "a.jpg")
    assert records["d"].path == str(tmp_path / "images" / "val2017" / "d.jpg")
    assert not records["a"].problems and records["a"].source == "coco"


def test_coco_unknown_category_is_quarantined_as_unknown_class(tmp_path):
    for name in ("a", "c"):
        write_bytes(tmp_path / "train2017" / f"{name}.jpg", jpeg(name))
    write_instances(tmp_path, "train2017", {1: "a.jpg", 3: "c.jpg"}, [(1, 1), (3, 99)])
    result = validate(read_source(DataParams(source="coco", path=tmp_path)), ValidateParams(max_invalid_fraction=1))
    assert result.manifest["image_id"].tolist() == ["a"]
    assert result.quarantine[["image_id", "reason"]].values.tolist() == [["c", "unknown_class"]]
    assert "99" in result.quarantine["detail"].item()


# --------------------------------------------------------------------------------------------
# YOLO / COCO128 layout
# --------------------------------------------------------------------------------------------

YOLO_CLASSES = ["person", "bicycle", "car"]


def write_yolo(root: Path, files: dict[str, str | None]) -> Path:
    """files maps 'subset/name' -> label file text (None: no label file)."""
    write_bytes(root / "classes.txt", "\n".join(YOLO_CLASSES).encode() + b"\n")
    for key, text in files.items():
        subset, name = key.split("/")
        write_bytes(root / "images" / subset / f"{name}.jpg", jpeg(key))
        if text is not None:
            write_bytes(root / "labels" / subset / f"{name}.txt", text.encode())
    return root


def test_yolo_labels_and_splits(tmp_path):
    write_yolo(
        tmp_path,
        {
            "train2017/a": "2 0.5 0.5 0.1 0.1\n0 0.2 0.2 0.1 0.1\n\n2 0.7 0.7 0.1 0.1\n",
            "train2017/b": None,
            "train2017/c": "1 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n",
            "train2017/d": "x 0.5 0.5 0.1 0.1\n",
            "val2017/e": "1 0.5 0.5 0.1 0.1\n",
        },
    )
    data = read_source(DataParams(source="yolo", path=tmp_path))
    assert data.classes == YOLO_CLASSES
    records = by_id(data)
    assert {i: (r.labels, r.split) for i, r in records.items()} == {
        "a": (["car", "person"], "train"),
        "b": ([], "train"),
        "c": (["bicycle"], "train"),
        "d": ([], "train"),
        "e": (["bicycle"], "val"),
    }
    assert [p.split(":")[0] for p in records["c"].problems] == ["unknown_class"]
    assert [p.split(":")[0] for p in records["d"].problems] == ["unknown_class"]
    assert not records["a"].problems and not records["b"].problems


def test_yolo_single_subset_is_unsplit(tmp_path):
    write_yolo(tmp_path, {"train2017/a": "0 0.5 0.5 0.1 0.1\n"})
    assert [(r.labels, r.split) for r in read_source(DataParams(source="yolo", path=tmp_path)).records] == [(["person"], "")]


def test_yolo_negative_class_id_is_unknown(tmp_path):
    write_yolo(tmp_path, {"train2017/a": "-1 0.5 0.5 0.1 0.1\n"})
    record = read_source(DataParams(source="yolo", path=tmp_path)).records[0]
    assert record.labels == [] and record.problems[0].startswith("unknown_class")


def test_yolo_flat_layout_reads_its_labels(tmp_path):
    write_bytes(tmp_path / "classes.txt", b"person\nbicycle\n")
    write_bytes(tmp_path / "images" / "a.jpg", jpeg("a"))
    write_bytes(tmp_path / "labels" / "a.txt", b"1 0.5 0.5 0.1 0.1\n")
    assert [r.labels for r in read_source(DataParams(source="yolo", path=tmp_path)).records] == [["bicycle"]]


# --------------------------------------------------------------------------------------------
# Folder + CSV
# --------------------------------------------------------------------------------------------


def test_csv_labels_splits_and_class_list(tmp_path):
    for name in ("a", "b", "c"):
        write_bytes(tmp_path / "img" / f"{name}.png", encode(solid(name), "PNG"))
    rows = [b"img/a.png, dog | cat |dog,TRAIN", b'"img/b.png","person",', b"", b"img/c.png,cat"]
    write_csv(tmp_path, rows, header=b"\xef\xbb\xbffilename,labels,split")  # with a UTF-8 BOM
    data = read_source(DataParams(source="csv", path=tmp_path))
    assert data.classes == ["cat", "dog", "person"], "without classes.txt: the sorted labels seen"
    assert [(r.image_id, r.labels, r.split, r.path) for r in data.records] == [
        ("a", ["cat", "dog"], "train", str(tmp_path / "img" / "a.png")),
        ("b", ["person"], "", str(tmp_path / "img" / "b.png")),
        ("c", ["cat"], "", str(tmp_path / "img" / "c.png")),
    ]
    write_bytes(tmp_path / "classes.txt", b"person\ndog\ncat\nhorse\n")
    assert read_source(DataParams(source="csv", path=tmp_path / "labels.csv")).classes == ["person", "dog", "cat", "horse"]


def test_csv_without_header_is_rejected_with_the_expected_header(tmp_path):
    write_bytes(tmp_path / "labels.csv", b"a.png,cat\n")
    with pytest.raises(ValueError, match="filename,labels"):
        read_source(DataParams(source="csv", path=tmp_path))


# --------------------------------------------------------------------------------------------
# Class subset
# --------------------------------------------------------------------------------------------


@pytest.fixture
def subset_root(tmp_path) -> Path:
    labels = {"cat_dog": ["cat", "dog"], "dog": ["dog"], "person": ["person"], "horse_person": ["horse", "person"]}
    for name in labels:
        write_bytes(tmp_path / f"{name}.png", encode(solid(name), "PNG"))
    rows = [csv_row(f"{n}.png", ls, "train") for n, ls in labels.items()] + [b"bad\xff.png,cat,train"]
    return write_csv(tmp_path, rows, ["cat", "dog", "horse", "person"])


def test_class_subset_filters_labels_in_the_given_order_and_drops_unlabeled(subset_root):
    data = read_source(DataParams(source="csv", path=subset_root, classes=["dog", "cat"]))
    assert data.classes == ["dog", "cat"]
    assert {r.image_id: r.labels for r in data.records} == {"cat_dog": ["cat", "dog"], "dog": ["dog"], "row6": []}
    assert data.records[-1].problems, "a bad row is kept for the quarantine even with no label left"


def test_class_subset_keeps_unlabeled_images_when_asked(subset_root):
    data = read_source(DataParams(source="csv", path=subset_root, classes=["horse"], drop_unlabeled=False))
    assert {r.image_id: r.labels for r in data.records} == {"cat_dog": [], "dog": [], "person": [], "horse_person": ["horse"], "row6": []}
    result = validate(data, ValidateParams(max_invalid_fraction=1))
    assert result.classes == ["horse"]
    assert result.manifest["image_id"].tolist() == ["horse_person"]
    assert sorted(result.quarantine["reason"]) == ["bad_csv_row", "no_labels", "no_labels", "no_labels"]


def test_class_subset_with_an_unknown_name_raises_naming_it(subset_root):
    with pytest.raises(ValueError, match="unicorn") as error:
        read_source(DataParams(source="csv", path=subset_root, classes=["cat", "unicorn"]))
    assert "'cat'" not in str(error.value).split("which the dataset")[0], "only the unknown name is reported"


def test_class_subset_does_not_hide_unknown_source_labels(tmp_path):
    for name in ("good", "typo"):
        write_bytes(tmp_path / f"{name}.png", encode(solid(name), "PNG"))
    write_csv(tmp_path, [csv_row("good.png", ["cat"]), csv_row("typo.png", ["dgo"])], ["cat", "dog"])
    data = read_source(DataParams(source="csv", path=tmp_path, classes=["cat"]))
    result = validate(data, ValidateParams(max_invalid_fraction=1))
    assert result.quarantine[["image_id", "reason"]].values.tolist() == [["typo", "unknown_class"]]


# --------------------------------------------------------------------------------------------
# Wrong dataset path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, layout",
    [("voc", voc.LAYOUT), ("coco", coco.JSON_LAYOUT), ("yolo", coco.YOLO_LAYOUT), ("csv", csv_folder.LAYOUT)],
)
def test_wrong_dataset_path_names_the_path_and_the_layout(tmp_path, source, layout):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetLayoutError) as error:
        read_source(DataParams(source=source, path=missing))
    message = str(error.value)
    assert str(missing) in message and layout in message
    assert "data.path" in message, "the message says which parameter to fix"
    assert isinstance(error.value, FileNotFoundError)
