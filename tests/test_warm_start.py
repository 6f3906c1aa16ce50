"""A warm start trains what the recipe trains (issue 21, part 2): the nightly retraining starts
from the champion's weights, and must then fine-tune the same top layers with the same schedule,
not every backbone layer (seen on voc-real: 80-87 s per epoch against 17-22 s, a nightly slower
than the whole pipeline)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from multitag.config import TrainParams
from multitag.data import manifest
from multitag.modeling.train import MODEL_FILE, load_served_model, read_history, train_architecture

CLASSES = ["cat", "dog", "person"]
SIZE = 32


def write_processed(root: Path, seed: int = 0) -> Path:
    """The smallest processed folder training reads: uint8 arrays per split and the class list."""
    rng = np.random.default_rng(seed)
    for split, rows in (("train", 24), ("val", 12)):
        np.save(root / f"{split}_x.npy", rng.integers(0, 256, (rows, SIZE, SIZE, 3), dtype=np.uint8))
        labels = rng.integers(0, 2, (rows, len(CLASSES)), dtype=np.uint8)
        labels[:, 0] = np.arange(rows) % 2  # every class has positives and negatives in both splits
        np.save(root / f"{split}_y.npy", labels)
    manifest.write_classes(CLASSES, root / "classes.json")
    return root


def tiny_params(**recipe: object) -> TrainParams:
    """Settings small enough for a test: no augmentation, flip or class weighting, a linear head."""
    fixed = {"batch_size": 12, "dense_units": [], "augment": False, "flip_average": False, "class_weighting": "none"}
    return TrainParams(**fixed, **recipe)


MOBILENET = {"fine_tune_epochs": 1, "fine_tune_learning_rate": 1e-4, "fine_tune_layers": 10, "weights": {"mobilenetv2": None}}


def test_a_warm_start_fine_tunes_the_recipes_top_layers_not_the_whole_backbone(tmp_path: Path):
    processed = write_processed(tmp_path)
    params = tiny_params(**MOBILENET, head_epochs=1, probe_ensemble=False, network_weight=1.0)
    cold = train_architecture("mobilenetv2", processed, tmp_path / "cold", params)
    warm = train_architecture("mobilenetv2", processed, tmp_path / "warm", params, init_model=tmp_path / "cold" / MODEL_FILE)

    info = json.loads((tmp_path / "warm" / "train_info.json").read_text())
    assert info["start"] == "warm" and cold.start == "cold"
    assert warm.fine_tune_trainable_parameters == cold.fine_tune_trainable_parameters, "the same trainable set as the recipe's"
    assert warm.fine_tune_trainable_parameters < warm.parameters / 2, "the top 10 layers and the head, not the whole backbone"
    assert warm.head_seconds == 0, "the champion's head is the warm start's head: no head phase"


def test_a_quick_refit_trains_only_the_head_on_cached_features_of_the_champions_network(tmp_path: Path):
    processed = write_processed(tmp_path)
    params = tiny_params(head_epochs=2, small_cnn_epochs=1, probe_ensemble=False, network_weight=1.0)
    champion = tmp_path / "champion"
    train_architecture("small_cnn", processed, champion, params)
    cache = tmp_path / "features"
    first = train_architecture(
        "small_cnn", processed, tmp_path / "quick", params, init_model=champion / MODEL_FILE, feature_cache=cache, quick=True
    )
    assert first.start == "quick" and first.fine_tune_seconds < 1 and first.fine_tune_trainable_parameters == 0
    assert "fine_tune_loss" not in read_history(tmp_path / "quick") and len(read_history(tmp_path / "quick")["head_loss"]) >= 1
    served, refitted = (load_served_model(folder) for folder in (champion, tmp_path / "quick"))
    extractor = lambda model: model.get_layer("multitag_logits").get_layer("small_cnn_features")  # noqa: E731
    kept = [np.array_equal(a, b) for a, b in zip(extractor(served).get_weights(), extractor(refitted).get_weights())]
    assert kept and all(kept), "the champion's backbone is kept as it is"
    head = lambda model: model.get_layer("multitag_logits").get_layer("head").get_weights()[0]  # noqa: E731
    assert not np.array_equal(head(served), head(refitted)), "the head was refitted"
    assert len(list(cache.glob("*.npz"))) == 1, "the champion's frozen features were cached"


@dataclass(frozen=True)
class Ensemble:
    """A mobilenetv2 + probe champion trained once for the module, with its feature cache."""

    processed: Path
    params: TrainParams
    model: Path
    cache: Path


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Ensemble:
    root = tmp_path_factory.mktemp("ensemble")
    processed = write_processed(root)
    params = tiny_params(**MOBILENET, head_epochs=1, probe_ensemble=True, probe_input_size=SIZE, network_weight=0.5)
    params = params.model_copy(update={"flip_average": True})  # as served on photos: both views
    train_architecture("mobilenetv2", processed, root / "model", params, feature_cache=root / "features")
    return Ensemble(processed, params, root / "model", root / "features")


def test_a_quick_refit_of_an_ensemble_refits_the_probe_alone_and_keeps_the_champions_network(ensemble: Ensemble, tmp_path: Path):
    champion, quick = ensemble.model, tmp_path / "quick"
    result = train_architecture(
        "mobilenetv2",
        ensemble.processed,
        quick,
        ensemble.params,
        init_model=champion / MODEL_FILE,
        feature_cache=ensemble.cache,
        quick=True,
    )

    assert result.start == "quick" and result.head_seconds == 0 and result.fine_tune_trainable_parameters == 0
    assert read_history(quick) == {}, "neither the head nor the network trained"
    served, refitted = (load_served_model(folder) for folder in (champion, quick))
    for before, after in zip(served.get_layer("multitag_logits").weights, refitted.get_layer("multitag_logits").weights):
        np.testing.assert_array_equal(before, after)
    assert refitted.get_layer("probe_branch") is not None


def test_the_probes_training_features_are_the_file_evaluation_reads(ensemble: Ensemble):
    """One home for a photo's probe features: the frozen features training computes for its train
    photos are the served model's probe member outputs, in the file modeling/ensemble.py reads, so a
    photo seen by either is never sent through the 384 px backbone again."""
    from multitag.modeling.ensemble import members, view_averaged
    from multitag.modeling.feature_cache import cached_features, member_file

    probe = members(load_served_model(ensemble.model)).probe_features
    x_train = np.load(ensemble.processed / "train_x.npy")
    path = member_file(ensemble.cache, probe, SIZE, flip=True)
    assert path.exists(), "training wrote them under the served member's own key"
    stored, computed = cached_features(path, x_train, lambda rows: view_averaged(probe, rows, True))
    assert computed == 0, "every train photo's probe features were read, none computed again"
    np.testing.assert_allclose(stored, view_averaged(probe, x_train, True), atol=1e-5)
