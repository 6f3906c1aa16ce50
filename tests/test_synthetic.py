"""Data tests for the synthetic shapes generator: deterministic, well-formed, balanced, idempotent."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from multitag.data.sources.synthetic import CLASSES, generate

N_IMAGES, SIZE, SEED = 60, 64, 7
SAMPLE_IMAGES = ["images/shape_00000.png", "images/shape_00017.png", "images/shape_00059.png"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), N_IMAGES, SIZE, SEED)


def read_rows(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_gives_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", N_IMAGES, SIZE, SEED)
    assert (again / "labels.csv").read_bytes() == (dataset / "labels.csv").read_bytes()
    for name in SAMPLE_IMAGES:
        assert (again / name).read_bytes() == (dataset / name).read_bytes()


def test_different_seed_gives_different_data(dataset: Path, tmp_path: Path) -> None:
    other = generate(tmp_path / "other", N_IMAGES, SIZE, SEED + 1)
    assert (other / "labels.csv").read_bytes() != (dataset / "labels.csv").read_bytes()
    assert all((other / name).read_bytes() != (dataset / name).read_bytes() for name in SAMPLE_IMAGES)


def test_layout_and_labels_are_well_formed(dataset: Path) -> None:
    assert (dataset / "classes.txt").read_text().split() == CLASSES
    with (dataset / "labels.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == ["filename", "labels"]
    rows = read_rows(dataset)
    assert len(rows) == N_IMAGES == len(list((dataset / "images").glob("*.png")))
    for row in rows:
        labels = row["labels"].split("|")
        assert labels == sorted(set(labels)), row
        assert 1 <= len(labels) <= 3 and set(labels) <= set(CLASSES), row
        with Image.open(dataset / row["filename"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))


def test_has_single_and_multi_label_images(dataset: Path) -> None:
    counts = Counter(len(row["labels"].split("|")) for row in read_rows(dataset))
    assert counts[1] > 0 and counts[2] + counts[3] > 0, counts


def test_every_class_is_reasonably_frequent(dataset: Path) -> None:
    presence = Counter(label for row in read_rows(dataset) for label in row["labels"].split("|"))
    for name in CLASSES:
        assert presence[name] >= 0.1 * N_IMAGES, presence


def test_same_arguments_skip_generation(dataset: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in [dataset / "labels.csv", dataset / SAMPLE_IMAGES[0]]}
    generate(dataset, N_IMAGES, SIZE, SEED)
    after = {p.name: p.stat().st_mtime_ns for p in [dataset / "labels.csv", dataset / SAMPLE_IMAGES[0]]}
    assert after == before


def test_other_arguments_regenerate_cleanly(tmp_path: Path) -> None:
    root = generate(tmp_path / "data", 20, SIZE, SEED)
    generate(root, 10, SIZE, SEED)
    assert len(read_rows(root)) == 10 == len(list((root / "images").glob("*.png")))
