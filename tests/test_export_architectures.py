"""The TFLite export covers the served graph of every architecture the project trains: a file of
its own, as each conversion takes a while (make test spreads test files over workers).

Each graph is the architecture's network with flip averaging and the probe branch, every op they
add. MobileNetV2's probe has a MobileNetV2 backbone, as training builds it. The two large networks
are not converted twice over (a second copy of a backbone doubles the conversion): ResNet50 goes
without the probe, and EfficientNetB0 has a small CNN's probe. It keeps one because, untrained,
its network alone gives every image the same scores to 1e-7, and AP parity on such ties measures
float noise. The gate checks every real export's parity before it serves."""

from __future__ import annotations

import pytest
from served_graphs import CLASSES, labelled_images, served_model

from multitag.lifecycle import export
from multitag.modeling.models import ARCHITECTURES

PROBE = {"resnet50": None, "efficientnetb0": "small_cnn"}  # the probe's backbone where it is not the network's own


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_the_export_of_each_architectures_served_graph_answers_like_keras(architecture, tmp_path):
    """Every architecture the project trains, with ImageNet weights or not (`weights: null` here)."""
    from multitag.lifecycle.tflite import TFLiteModel

    model = served_model(architecture, seed=0, probe=PROBE.get(architecture, "same"))
    images, labels = labelled_images(6, seed=1)
    reference = model.predict_on_batch(images.astype("float32"))
    exported = TFLiteModel(export.to_tflite(model, tmp_path / "model.tflite")).predict_on_batch(images)
    parity = export.check_parity(labels, reference, exported, CLASSES)
    assert parity.passed, parity
    assert parity.max_score_difference <= export.MAX_SCORE_DIFFERENCE and exported.shape == (6, len(CLASSES))
