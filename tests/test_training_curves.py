"""Per-epoch training curves from Keras to DVC: CSVLogger writes each phase's epochs while it
trains, and the evaluate stage hands them with the results to DVCLive, whose files are what
dvc.yaml declares as the pipeline's metrics and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_fit_logs_every_epoch_to_csv_and_read_history_keys_them_by_phase(tmp_path: Path):
    import keras

    from multitag.config import TrainParams
    from multitag.modeling import train

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 4)).astype("float32"), (rng.random((48, 3)) < 0.5).astype("float32")
    keras.utils.set_random_seed(0)
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    params = TrainParams(batch_size=16, patience=10)
    log_dir = tmp_path / train.HISTORY_DIR
    log_dir.mkdir()

    train.fit_phase(
        network, (x, y), x, y, 3, 1e-2, 3, params, train.make_loss("none", np.ones(3, "float32")), log_dir / "head.csv", "tiny head"
    )

    with (log_dir / "head.csv").open(newline="") as rows:
        logged = list(csv.DictReader(rows))
    assert [row["epoch"] for row in logged] == ["0", "1", "2"]
    assert {"loss", "val_mAP"} <= set(logged[0])
    history = train.read_history(tmp_path)
    assert len(history["head_loss"]) == len(history["head_val_mAP"]) == 3
    assert history["head_val_mAP"] == [float(row["val_mAP"]) for row in logged]
    assert not any(key.startswith("fine_tune_") for key in history), "a phase that did not run is absent"


def test_dvclive_writes_the_files_dvc_yaml_declares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from multitag.layout import Layout
    from multitag.lifecycle import tracking

    monkeypatch.chdir(tmp_path)  # outside any git or DVC repository: DVCLive has none to touch
    histories = {
        "small_cnn": {"fine_tune_loss": [0.7, 0.5, 0.4], "fine_tune_val_mAP": [0.3, 0.5, 0.6]},
        "mobilenetv2": {"head_loss": [0.6], "head_val_mAP": [0.4], "fine_tune_loss": [0.3, 0.2], "fine_tune_val_mAP": [0.7, 0.8]},
    }
    results = {
        "small_cnn": {"test_mAP": 0.55, "val_mAP": None, "default_threshold_classes": ["ring"]},
        "mobilenetv2": {"test_mAP": 0.75, "val_mAP": 0.8, "default_threshold_classes": []},
    }
    layout = Layout(tmp_path)

    metrics_file = tracking.log_dvc_metrics(layout.dvclive, histories, results)

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    [metrics_path] = [next(iter(entry)) for entry in declared["metrics"]]
    [plots_path] = [next(iter(entry)) for entry in declared["plots"]]
    assert metrics_file == tmp_path / metrics_path
    summary = json.loads(metrics_file.read_text())
    assert summary["small_cnn"]["test_mAP"] == 0.55 and summary["small_cnn"]["default_threshold_classes"] == ["ring"]
    assert summary["mobilenetv2"]["eval"]["mAP"] == 0.8, "the last epoch beside the results"
    assert _curve(tmp_path / plots_path / "mobilenetv2" / "eval" / "mAP.tsv") == [(0, 0.4), (1, 0.7), (2, 0.8)], "head, then fine-tuning"
    assert _curve(tmp_path / plots_path / "small_cnn" / "train" / "loss.tsv") == [(0, 0.7), (1, 0.5), (2, 0.4)]
    assert not (tmp_path / "dvc.yaml").exists() and not list(layout.dvclive.glob("*dvc.yaml")), "dvc.yaml stays ours"


def test_dvclive_starts_afresh_so_a_dropped_architecture_leaves_no_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from multitag.lifecycle import tracking

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "dvclive"
    tracking.log_dvc_metrics(folder, {"old": {"head_loss": [1.0], "head_val_mAP": [0.1]}}, {"old": {"test_mAP": 0.1}})
    tracking.log_dvc_metrics(folder, {"new": {"head_loss": [1.0], "head_val_mAP": [0.2]}}, {"new": {"test_mAP": 0.2}})
    assert not (folder / "plots" / "metrics" / "old").exists()
    assert "old" not in json.loads((folder / "metrics.json").read_text())


def _curve(path: Path) -> list[tuple[int, float]]:
    """(step, value) rows of one DVCLive metric file."""
    with path.open(newline="") as rows:
        return [(int(row["step"]), float(row[path.stem])) for row in csv.DictReader(rows, delimiter="\t")]
