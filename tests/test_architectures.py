"""The promised architectures beyond MobileNetV2 (issue 23): EfficientNetB0 and ResNet50 train
(head, then fine-tuning of the top layers), evaluate, log, and serve from their model URI, on tiny
data with `weights: null`: no ImageNet weights for them exist offline. The photo recipe's served
graph (flip averaging, probe branch) and its TFLite export with parity are checked for every
architecture in test_export.py; `train.weights.<arch>` as a path to a weights file is tested with the shared
MobileNetV2 file here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corpus import encode, solid
from test_warm_start import CLASSES, SIZE, write_processed

from multitag.config import EvaluateParams, TrainParams
from multitag.modeling.evaluate import evaluate_model
from multitag.modeling.train import MODEL_FILE, load_served_model, read_history, train_architecture

SHARED_MOBILENET = (
    Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)


def with_test_split(processed: Path) -> Path:
    """write_processed's train/val plus a test split, so the evaluation has one to score."""
    from multitag.data import manifest

    rng = np.random.default_rng(9)
    np.save(processed / "test_x.npy", rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8))
    np.save(processed / "test_y.npy", (np.arange(12)[:, None] + np.arange(len(CLASSES))) % 2)
    manifest.write_classes(CLASSES, processed / "classes.json")
    return processed


@pytest.mark.parametrize("architecture", ["efficientnetb0", "resnet50"])
def test_the_architecture_trains_evaluates_and_serves_from_its_uri(architecture, tmp_path, registry_env):
    from multitag.lifecycle import tracking
    from multitag.lifecycle.predictor import Predictor

    processed = with_test_split(write_processed(tmp_path))
    params = TrainParams(
        batch_size=12,
        dense_units=[],
        augment=False,
        class_weighting="none",
        head_epochs=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-4,
        fine_tune_layers=10,
        weights={architecture: None},
        flip_average=False,
        probe_ensemble=False,
        network_weight=1.0,
    )
    result = train_architecture(architecture, processed, tmp_path / "model", params)
    history = read_history(tmp_path / "model")
    assert result.weights is None and len(history["head_loss"]) == 1 and len(history["fine_tune_loss"]) == 1
    assert 0 < result.fine_tune_trainable_parameters < result.parameters / 2, "the top 10 layers and the head, not the backbone"

    model = load_served_model(tmp_path / "model")
    evaluation = evaluate_model(architecture, model, tmp_path / "model" / MODEL_FILE, processed, CLASSES, EvaluateParams(latency_runs=2))
    assert evaluation.scores_test.shape == (12, len(CLASSES)) and evaluation.test["tuned"]["mAP"] is not None

    example = np.load(processed / "test_x.npy")[:4]
    _, model_uri = tracking.log_candidate(model, evaluation, result, history, example, "stretch", {})
    served = Predictor.from_uri(model_uri, runtime="keras")
    (answer,) = served.predict_bytes([encode(solid(f"{architecture}-photo", (80, 60)), "PNG")])
    assert served.info["architecture"] == architecture and list(answer.probabilities) == CLASSES
    np.testing.assert_allclose(served.predict_arrays(example), model.predict_on_batch(example.astype("float32")), atol=1e-6)


@pytest.mark.skipif(not SHARED_MOBILENET.exists(), reason=f"{SHARED_MOBILENET} missing (../shared/weights)")
def test_a_weights_file_path_loads_every_layer_of_it_and_a_file_that_does_not_fit_is_an_error():
    """`train.weights.mobilenetv2: <path to a Keras .h5>`: the backbone starts from that file (the
    shared ImageNet file), and the alpha-0.35 file for the 1.0 network is refused, not half-loaded."""
    import keras

    from multitag.errors import UsageError
    from multitag.modeling import models

    extractor = models.build_feature_extractor("mobilenetv2", 96, str(SHARED_MOBILENET))
    (backbone,) = [layer for layer in extractor.layers if isinstance(layer, keras.Model)]
    reference = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None)
    reference.load_weights(str(SHARED_MOBILENET))
    assert len(backbone.weights) == len(reference.weights) == 260
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), reference.get_weights()))
    other = SHARED_MOBILENET.with_name(SHARED_MOBILENET.name.replace("1.0_224", "0.35_224"))
    with pytest.raises(UsageError, match=r"train\.weights\.mobilenetv2 = .*0\.35_224.* does not fit"):
        models.build_feature_extractor("mobilenetv2", 96, str(other))
