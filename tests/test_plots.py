"""Code tests for multitag.modeling.plots: each figure is written as a real PNG on tiny data."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from multitag.modeling import plots
from multitag.modeling.metrics import compute_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "car", "boat"]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y_true = (rng.random((6, 4)) < 0.4).astype(np.uint8)
    y_true[:, 0], y_true[:, 3] = [1, 0, 1, 0, 1, 0], 0  # "boat" has no positives
    return {
        "images": rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8),
        "y_true": y_true,
        "y_score": rng.random((6, 4)),
    }


def _assert_png(path, expected):
    assert path == expected
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert path.stat().st_size > 1000
    assert plt.get_fignums() == [], "the figure should be closed"


def test_training_curves(tmp_path):
    history = {"loss": [0.7, 0.5, 0.4], "val_loss": [0.72, 0.6, 0.55], "val_mAP": [0.3, 0.5, 0.6]}
    target = tmp_path / "nested" / "curves.png"
    _assert_png(plots.training_curves(history, target), target)


def test_per_class_ap_bar_with_undefined_classes(tmp_path):
    target = tmp_path / "ap.png"
    _assert_png(plots.per_class_ap_bar({"cat": 0.8, "dog": None, "car": float("nan")}, target), target)


def test_precision_recall_curves_skip_classes_without_positives(tmp_path, data):
    target = tmp_path / "pr.png"
    _assert_png(plots.precision_recall_curves(data["y_true"], data["y_score"], CLASSES, target), target)


def test_confusion_counts(tmp_path, data):
    per_class = compute_metrics(data["y_true"], data["y_score"], 0.5, CLASSES)["per_class"]
    target = tmp_path / "counts.png"
    _assert_png(plots.confusion_counts(per_class, target), target)


def test_prediction_grid(tmp_path, data):
    target = tmp_path / "grid.png"
    path = plots.prediction_grid(data["images"], data["y_true"], data["y_score"], np.full(4, 0.5), CLASSES, target, max_images=5)
    _assert_png(path, target)


def test_empty_inputs_fail_with_a_clear_message(tmp_path, data):
    with pytest.raises(ValueError, match="history is empty"):
        plots.training_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no class has positives"):
        plots.precision_recall_curves(np.zeros((3, 2)), np.ones((3, 2)), ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
