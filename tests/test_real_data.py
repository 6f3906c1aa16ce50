"""Data tests on the real datasets in ../shared: validate + preprocess through `multitag.stages`,
then check every label matrix row against labels parsed here, independently of the library."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
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
MODEL_MARGIN = 0.3  # test mAP over the class prior's (measured: 0.55 against 0.13)
INVARIANT_SHARE = 0.97  # tag decisions (photo x class) kept under a harmless change
CAT_RECALL = 0.8  # photos of a cat alone tagged cat


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


@dataclass(frozen=True)
class SliceModel:
    """The photo recipe's head on frozen ImageNet features of a voc-real slice, evaluated as
    `evaluate` does: what the behavioural tests below ask questions of."""

    params: Params
    layout: Layout
    classes: list[str]
    model: object  # the served keras.Model
    evaluation: object  # modeling.evaluate.Evaluation


@pytest.fixture(scope="module")
def slice_model(tmp_path_factory) -> SliceModel:
    tmp_path = tmp_path_factory.mktemp("voc-slice-model")
    (tmp_path / "keras" / "models").mkdir(parents=True)
    for file in (SHARED / "weights").glob("*.h5"):
        (tmp_path / "keras" / "models" / file.name).symlink_to(file)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # before Keras is imported: it reads KERAS_HOME then
        from multitag.modeling.evaluate import evaluate_model
        from multitag.modeling.train import MODEL_FILE, load_served_model
        from multitag.stages import train_stage

        data = voc_slice(tmp_path / "voc-slice", VOC_SLICE)
        params = Params.model_validate(
            {
                "data": {"source": "voc", "path": str(data)},
                "preprocess": {"image_size": 112, "workers": 2},  # not a size Keras has own weights for: the 224 file
                # the photo recipe's probe reads 384px; 224 keeps this fixture a third of the cost
                "train": {"architectures": ["mobilenetv2"], "fine_tune_epochs": 0, "head_epochs": 40, "probe_input_size": 224},
                "evaluate": {"latency_runs": 3},  # no test here reads the latency
            }
        )
        layout = Layout(root=tmp_path / "work")
        validate_stage(params, layout)
        preprocess_stage(params, layout)
        train_stage(params, "mobilenetv2", layout)
        model_dir = layout.models / "mobilenetv2"
        classes = manifest.read_classes(layout.processed / "classes.json")
        model = load_served_model(model_dir)
        # with the feature cache training wrote, as the evaluate stage scores (member by member)
        evaluation = evaluate_model(
            "mobilenetv2", model, model_dir / MODEL_FILE, layout.processed, classes, params.evaluate, layout.feature_cache
        )
        yield SliceModel(params, layout, classes, model, evaluation)


@pytest.mark.slow
def test_no_class_is_served_on_more_than_three_times_its_true_count_on_real_photos(slice_model):
    """Thresholds as evaluate tunes them. Before bounded thresholds with a default for rare
    classes, classes with 1-5 validation positives got thresholds of ~0 and were served on
    nearly every photo."""
    from multitag.modeling.metrics import apply_thresholds

    evaluation, classes, params = slice_model.evaluation, slice_model.classes, slice_model.params
    assert evaluation.default_threshold_classes, "a 420-photo slice has classes too rare to tune"
    low, high = params.evaluate.threshold_bounds
    assert all(low <= t <= high for t in evaluation.thresholds)
    predicted = apply_thresholds(evaluation.scores_test, np.asarray(evaluation.thresholds)).sum(axis=0)
    true = evaluation.y_test.sum(axis=0)
    over = {c: (int(p), int(t)) for c, p, t in zip(classes, predicted, true) if p > 3 * max(t, 1)}
    assert not over, f"served on more than 3x the true count (predicted, true): {over}"
    per_image = predicted.sum() / len(evaluation.y_test)
    assert per_image <= 2 * true.sum() / len(evaluation.y_test), f"{per_image:.2f} labels per photo"


@pytest.mark.slow
def test_the_model_and_the_probe_baseline_both_learn_well_beyond_the_class_prior(slice_model):
    """The gate's first-model baselines on the same real photos: the probe is scored and learns, and
    the trained model ranks far better than the class prior (Made-With-ML's minimum bar)."""
    from multitag.modeling.baselines import score_baselines

    scored = {b.name: b for b in score_baselines(["class_prior", "probe"], slice_model.layout.processed, slice_model.params.train.seed)}
    assert scored["probe"].mAP is not None, scored["probe"].detail
    assert scored["probe"].mAP > scored["class_prior"].mAP + 0.1, scored
    model_map = slice_model.evaluation.test["tuned"]["mAP"]
    assert model_map > scored["class_prior"].mAP + MODEL_MARGIN, (model_map, scored)


@pytest.mark.slow
def test_labels_survive_what_a_photo_library_does_to_a_photo(slice_model):
    """Invariance: re-saved as JPEG (quality 85) or 10% darker, a test photo keeps its tags (measured
    on this slice: 98.8% and 99.6% of the decisions, photo x class, unchanged)."""
    import io

    from multitag.modeling.metrics import apply_thresholds

    x = np.asarray(np.load(slice_model.layout.processed / "test_x.npy", mmap_mode="r"))
    thresholds = np.asarray(slice_model.evaluation.thresholds)
    tags = apply_thresholds(slice_model.evaluation.scores_test, thresholds)

    def resaved(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=85)
        return np.asarray(Image.open(buffer).convert("RGB"))

    for name, changed in (("JPEG 85", np.stack([resaved(i) for i in x])), ("10% darker", (x * 0.9).astype(np.uint8))):
        changed_tags = apply_thresholds(slice_model.model.predict(changed.astype("float32"), verbose=0), thresholds)
        kept = float((changed_tags == tags).mean())
        assert kept >= INVARIANT_SHARE, f"{name}: {1 - kept:.1%} of the test photos' tag decisions changed"


@pytest.mark.slow
def test_a_photo_of_a_cat_alone_is_tagged_cat(slice_model):
    """Minimum functionality on a frequent class: the test photos whose only label is cat."""
    from multitag.modeling.metrics import apply_thresholds

    evaluation, classes = slice_model.evaluation, slice_model.classes
    cat = classes.index("cat")
    alone = np.flatnonzero((evaluation.y_test[:, cat] == 1) & (evaluation.y_test.sum(axis=1) == 1))
    tagged = apply_thresholds(evaluation.scores_test[alone], np.asarray(evaluation.thresholds))[:, cat]
    assert len(alone) >= 8 and tagged.mean() >= CAT_RECALL, f"{int(tagged.sum())} of {len(alone)} tagged cat"
