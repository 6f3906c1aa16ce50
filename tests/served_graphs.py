"""Tiny graphs of the shape the project serves (flip views and the probe branch that resizes
inside the graph, models.with_sigmoid), untrained, and labelled images for them: what the export
tests convert and check, and `log_model` to log one the project's way."""

from __future__ import annotations

import numpy as np

CLASSES = ["cat", "dog", "person"]
SIZE = 32  # the smallest input every architecture accepts
PROBE_SIZE = 48  # the probe reads the images larger, resized inside the graph, as the photo recipe does


def served_model(architecture: str, seed: int, probe: str | None = "same"):
    """The graph the project serves, untrained: flip averaging, plus the frozen-feature probe branch
    that resizes inside the graph, in front of the sigmoid (models.with_sigmoid). The probe's
    backbone is the network's own architecture ("same", as training builds it), another one, or
    none (None)."""
    import keras

    from multitag.modeling import models

    keras.utils.set_random_seed(seed)
    extractor = models.build_feature_extractor(architecture, SIZE, None)
    network = models.assemble(extractor, models.build_head(int(extractor.output_shape[-1]), len(CLASSES), [], 0.0))
    if probe is None:
        return models.with_sigmoid(network, flip_average=True)
    backbone = architecture if probe == "same" else probe
    features = models.probe_features(models.build_feature_extractor(backbone, PROBE_SIZE, None), SIZE)
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.05, (int(features.output_shape[-1]), len(CLASSES))).astype("float32")
    probe_branch = models.probe_branch(features, kernel, rng.normal(0, 0.1, len(CLASSES)).astype("float32"))
    return models.with_sigmoid(network, flip_average=True, probe=probe_branch, network_weight=0.5)


def labelled_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, multi-hot labels with every class both present and absent)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count)[:, None] + np.arange(len(CLASSES))) % 2
    return rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8), labels.astype(np.uint8)


def log_model(model) -> str:
    """Log `model` the project's way (tracking.log_keras_model) in the current registry: its runs:/ URI."""
    import mlflow

    from multitag.lifecycle import tracking

    metadata = {
        "architecture": "small_cnn",
        "classes": CLASSES,
        "thresholds": [0.5] * len(CLASSES),
        "input_size": SIZE,
        "preprocessing": {"resize": "stretch"},
    }
    tracking.configure()
    with mlflow.start_run(run_name="export-test") as run:
        return tracking.log_keras_model(model, np.zeros((1, SIZE, SIZE, 3), "float32"), metadata).format(run_id=run.info.run_id)
