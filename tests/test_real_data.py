"""Data tests on the real datasets in ../shared: validate + preprocess through `multitag.stages`,
then check every label matrix row against labels parsed here, independently of the library."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multitag.config import Params
from multitag.data import manifest
from multitag.layout import Layout
from multitag.stages import preprocess_stage, validate_stage

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"
SIZE = 32

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not DATASETS.is_dir(), reason=f"real datasets not found at {DATASETS} (../shared is absent on this machine)"),
]


def run_stages(source: str, path: Path, work: Path) -> tuple[Layout, dict]:
    params = Params.model_validate({"data": {"source": source, "path": str(path)}, "preprocess": {"image_size": SIZE, "workers": 2}})
    layout = Layout(root=work)
    paths = validate_stage(params, layout)
    preprocess_stage(params, layout)
    return layout, json.loads(paths["report_json"].read_text())


def check_label_matrices(layout: Layout, truth: dict[str, set[str]]) -> pd.DataFrame:
    """Each row of <split>_y.npy must be the independently parsed labels of that manifest row."""
    processed = manifest.read(layout.processed / "manifest.parquet")
    classes = manifest.read_classes(layout.processed / "classes.json")
    assert processed["image_id"].is_unique
    for split in ("train", "val", "test"):
        rows = processed[processed["split"] == split].reset_index(drop=True)
        y = np.load(layout.processed / f"{split}_y.npy")
        x = np.load(layout.processed / f"{split}_x.npy", mmap_mode="r")
        assert y.shape == (len(rows), len(classes)) and x.shape == (len(rows), SIZE, SIZE, 3) and x.dtype == np.uint8
        for i, image_id in enumerate(rows["image_id"]):
            present = {classes[c] for c in np.flatnonzero(y[i])}
            assert present == truth[image_id], f"{split} row {i} ({image_id}): {sorted(present)} != {sorted(truth[image_id])}"
        check_some_pixels(rows, x)
    return processed


def check_some_pixels(rows: pd.DataFrame, x: np.ndarray, count: int = 8) -> None:
    """A few rows of x must look like their own image decoded here with plain Pillow."""
    for i in np.linspace(0, len(rows) - 1, min(count, len(rows))).astype(int):
        with Image.open(rows["path"][i]) as image:
            reference = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=float)
        difference = np.abs(x[i].astype(float) - reference).mean()
        assert difference < 12, f"row {i} ({rows['image_id'][i]}) differs from its image by {difference:.1f} on average"


def assert_splits_leak_free(processed: pd.DataFrame) -> None:
    test_hashes = set(processed.loc[processed["split"] == "test", "sha256"])
    assert not test_hashes & set(processed.loc[processed["split"] != "test", "sha256"])
    assert processed["sha256"].is_unique


def test_voc_real_labels_match_the_xml(tmp_path):
    root = DATASETS / "voc-real"
    truth = {  # the distinct <object><name> values of each annotation
        xml.stem: {(obj.findtext("name") or "").strip() for obj in ET.parse(xml).getroot().iter("object")}
        for xml in sorted((root / "Annotations").glob("*.xml"))
    }
    listed = {split: set((root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()) for split in ("train", "val")}
    assert len(truth) == 1522

    layout, report = run_stages("voc", root, tmp_path)
    assert report["images_total"] == report["images_valid"] == 1522, report["quarantine_reasons"]
    processed = check_label_matrices(layout, truth)
    counts = processed["split"].value_counts()
    assert counts.sum() == 1522 and all(counts.get(s, 0) > 0 for s in ("train", "val", "test"))
    summary = json.loads((layout.processed / "summary.json").read_text())
    assert summary["splits"] == {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}
    # train/val are redrawn from the official halves (keep_source_splits: false); test from both
    assert set(processed.loc[processed["split"] != "test", "image_id"]) <= listed["train"] | listed["val"]
    assert counts["train"] > 2 * counts["val"], "more photos train than the official 737/785 halves allow"
    assert_splits_leak_free(processed)


def test_coco_real_labels_match_the_yolo_files(tmp_path):
    root = DATASETS / "coco-real"
    classes = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    images = sorted((root / "images" / "train2017").glob("*.jpg"))
    truth = {}
    for image in images:
        label_file = root / "labels" / "train2017" / f"{image.stem}.txt"
        lines = label_file.read_text().splitlines() if label_file.exists() else []
        truth[image.stem] = {classes[int(line.split()[0])] for line in lines if line.strip()}
    unlabelled = {image_id for image_id, labels in truth.items() if not labels}
    assert len(truth) == 128

    layout, report = run_stages("yolo", root, tmp_path)
    quarantine = pd.read_parquet(layout.validated / "quarantine.parquet")
    assert dict(zip(quarantine["image_id"], quarantine["reason"])) == {i: "no_labels" for i in unlabelled}
    assert report["images_valid"] == 128 - len(unlabelled)
    processed = check_label_matrices(layout, truth)
    assert manifest.read_classes(layout.processed / "classes.json") == classes
    assert len(processed) + len(quarantine) == 128
    assert all((processed["split"] == s).sum() > 0 for s in ("train", "val", "test"))
    assert_splits_leak_free(processed)


VOC_SLICE = 420  # photos: enough for frequent classes to tune, few enough that rare ones cannot


def voc_slice(root: Path, count: int) -> Path:
    """The first `count` voc-real photos (by id) as a VOC folder of symlinks: a small real dataset."""
    source = DATASETS / "voc-real"
    ids = sorted((source / "ImageSets" / "Main" / "trainval.txt").read_text().split())[:count]
    for folder, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".xml")):
        (root / folder).mkdir(parents=True)
        for image_id in ids:
            (root / folder / f"{image_id}{suffix}").symlink_to(source / folder / f"{image_id}{suffix}")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.slow
def test_no_class_is_served_on_more_than_three_times_its_true_count_on_real_photos(tmp_path, monkeypatch):
    """The photo recipe's head on frozen ImageNet features, thresholds as evaluate tunes them.

    Before bounded thresholds with a default for rare classes, classes with 1-5 validation
    positives got thresholds of ~0 and were served on nearly every photo.
    """
    from multitag.modeling.baselines import score_baselines
    from multitag.modeling.evaluate import evaluate_model
    from multitag.modeling.metrics import apply_thresholds
    from multitag.modeling.train import MODEL_FILE, load_served_model
    from multitag.stages import train_stage

    weights = SHARED / "weights"
    (tmp_path / "keras" / "models").mkdir(parents=True)
    for file in weights.glob("*.h5"):
        (tmp_path / "keras" / "models" / file.name).symlink_to(file)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    data = voc_slice(tmp_path / "voc-slice", VOC_SLICE)
    params = Params.model_validate(
        {
            "data": {"source": "voc", "path": str(data)},
            "preprocess": {"image_size": 112, "workers": 2},  # not a size Keras has own weights for: the 224 file
            "train": {"architectures": ["mobilenetv2"], "fine_tune_epochs": 0, "head_epochs": 40},
        }
    )
    layout = Layout(root=tmp_path / "work")
    validate_stage(params, layout)
    preprocess_stage(params, layout)
    train_stage(params, "mobilenetv2", layout)
    model_dir = layout.models / "mobilenetv2"
    classes = manifest.read_classes(layout.processed / "classes.json")
    evaluation = evaluate_model(
        "mobilenetv2", load_served_model(model_dir), model_dir / MODEL_FILE, layout.processed, classes, params.evaluate
    )

    assert evaluation.default_threshold_classes, "a 420-photo slice has classes too rare to tune"
    low, high = params.evaluate.threshold_bounds
    assert all(low <= t <= high for t in evaluation.thresholds)
    predicted = apply_thresholds(evaluation.scores_test, np.asarray(evaluation.thresholds)).sum(axis=0)
    true = evaluation.y_test.sum(axis=0)
    over = {c: (int(p), int(t)) for c, p, t in zip(classes, predicted, true) if p > 3 * max(t, 1)}
    assert not over, f"served on more than 3x the true count (predicted, true): {over}"
    per_image = predicted.sum() / len(evaluation.y_test)
    assert per_image <= 2 * true.sum() / len(evaluation.y_test), f"{per_image:.2f} labels per photo"

    # the gate's first-model baselines on the same real photos: the probe is scored, and learns
    scored = {b.name: b for b in score_baselines(["class_prior", "probe"], layout.processed, params.train.seed)}
    assert scored["probe"].mAP is not None, scored["probe"].detail
    assert scored["probe"].mAP > scored["class_prior"].mAP + 0.1, scored
