"""Architectures behind one registry keyed by name, and the head every one of them shares.

A model is `inputs (0-255 float) -> backbone's own preprocessing -> backbone -> pooled features
-> head -> logits`; the served model appends a sigmoid, so training uses the numerically stable
from-logits loss while users get probabilities. Normalisation lives in the graph, never on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import layers

from multitag.errors import MissingInputError, UsageError


@dataclass(frozen=True)
class Architecture:
    """How to build a backbone and normalise its input; `pretrained` backbones get two phases."""

    build: Callable[..., keras.Model]
    normalise: Callable[[keras.KerasTensor], keras.KerasTensor]
    pretrained: bool
    pooling: str = "avg"  # "max" suits presence detection of small objects from scratch


def _scale(offset: float, scale: float) -> Callable:
    return lambda x: layers.Rescaling(scale, offset, name="normalise")(x)


@keras.saving.register_keras_serializable(package="multitag")
class ReverseChannels(layers.Layer):
    """RGB -> BGR; a named layer (not a Lambda) so saved models load without unsafe code."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=-1)


@keras.saving.register_keras_serializable(package="multitag")
class MirrorImage(layers.Layer):
    """Left-right mirror of an (N, H, W, C) batch; a named layer so saved models load safely. The
    served graphs of models registered before BothViews call each member on it and on the images."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


@keras.saving.register_keras_serializable(package="multitag")
class BothViews(layers.Layer):
    """(N, H, W, C) -> (2N, H, W, C): the images, then their mirror images, as one batch. Each member
    of the served model then runs once over both views, so its export traces one call of its graph,
    not two, and converts faster (bench/export_views.py: 1.14x for the photo recipe's ensemble)."""

    def call(self, inputs):
        return keras.ops.concatenate([inputs, keras.ops.flip(inputs, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


@keras.saving.register_keras_serializable(package="multitag")
class ViewMean(layers.Layer):
    """(2N, C) outputs of a BothViews batch -> (N, C): each image's output averaged with its mirror's."""

    def call(self, inputs):
        half = keras.ops.shape(inputs)[0] // 2
        return (inputs[:half] + inputs[half:]) / 2.0

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


def _caffe(x):
    """ResNet50's caffe-style input: BGR channel order, ImageNet means subtracted."""
    bgr = ReverseChannels(name="rgb_to_bgr")(x)
    return layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0], name="normalise")(bgr)


def _application(constructor: Callable) -> Callable[..., keras.Model]:
    def build(input_size: int, weights: str | None) -> keras.Model:
        return constructor(include_top=False, weights=weights, input_shape=(input_size, input_size, 3), pooling=None)

    return build


def _small_cnn(input_size: int, weights: str | None) -> keras.Model:
    """A compact CNN trained from scratch: fast on CPU, enough for the shapes demo.

    One conv per stage at full resolution before each pooling keeps thin strokes visible at a
    fraction of the cost of strided stems or wide early layers (~16 M multiply-adds at 64 px).
    """
    inputs = keras.Input((input_size, input_size, 3))
    x = inputs
    for filters in (16, 32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D()(layers.ReLU()(layers.BatchNormalization()(x)))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(192, 3, padding="same", use_bias=False)(x)))
    model = keras.Model(inputs, x, name="small_cnn")
    if weights:
        model.load_weights(weights)
    return model


ARCHITECTURES: dict[str, Architecture] = {
    "mobilenetv2": Architecture(_application(keras.applications.MobileNetV2), _scale(-1.0, 1 / 127.5), True),
    "efficientnetb0": Architecture(_application(keras.applications.EfficientNetB0), lambda x: x, True),  # rescales inside
    "resnet50": Architecture(_application(keras.applications.ResNet50), _caffe, True),
    "small_cnn": Architecture(_small_cnn, _scale(0.0, 1 / 255.0), False, pooling="max"),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def resolve_weights(name: str, weights: str | None) -> str | None:
    """'imagenet', None, or a file path; a path that does not exist is a clear error (a usage error,
    which the flows do not retry), not a download or the loader's bare file-not-found."""
    if weights in (None, "imagenet"):
        return weights
    from pathlib import Path

    if not Path(weights).exists():
        raise MissingInputError(f"train.weights.{name} = {weights} does not exist; use imagenet, null or a weights file")
    return weights


def build_feature_extractor(name: str, input_size: int, weights: str | None) -> keras.Model:
    """Images (0-255) -> pooled feature vectors: the frozen part that phase 1 runs only once."""
    arch = architecture(name)
    backbone = arch.build(input_size, None if weights not in (None, "imagenet") else weights)
    if weights not in (None, "imagenet"):
        load_weights_file(backbone, name, weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    pool = layers.GlobalMaxPooling2D if arch.pooling == "max" else layers.GlobalAveragePooling2D
    features = pool(name="pool")(backbone(arch.normalise(inputs)))
    return keras.Model(inputs, features, name=f"{name}_features")


def load_weights_file(backbone: keras.Model, name: str, path: str) -> None:
    """A user's weights file, every layer of it: a file for another variant (MobileNetV2 alpha 0.35
    for 1.0) is an error naming the setting, never a backbone left partly random in silence."""
    try:
        backbone.load_weights(path)
    except ValueError as err:
        raise UsageError(f"train.weights.{name} = {path} does not fit {backbone.name}: {str(err).splitlines()[0]}") from err


def build_head(feature_dim: int, n_classes: int, dense_units: list[int], dropout: float) -> keras.Model:
    """Pooled features -> per-class logits, with optional dense layers and dropout."""
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for units in dense_units:
        x = layers.Dropout(dropout)(x)
        x = layers.Dense(units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="head")


def assemble(feature_extractor: keras.Model, head: keras.Model) -> keras.Model:
    """The whole trainable network: images -> logits."""
    inputs = keras.Input(feature_extractor.input_shape[1:], name="image")
    return keras.Model(inputs, head(feature_extractor(inputs)), name="multitag_logits")


def with_sigmoid(
    logits_model: keras.Model, flip_average: bool = False, probe: keras.Model | None = None, network_weight: float = 0.5
) -> keras.Model:
    """The served model: the same graph with a sigmoid on top, so it outputs probabilities.

    With `flip_average`, each member scores the image and its mirror image and its two logits
    are averaged (test-time augmentation inside the graph, so every consumer gets it). With a
    `probe` branch (`probe_branch`), the logits are `network_weight` x the fine-tuned network's
    plus the rest x the probe's: an ensemble that is one model, served from one URI. Logits, not
    probabilities, are averaged: on voc-real validation every one of the 12 best ensembles did so.
    """
    inputs = keras.Input(logits_model.input_shape[1:], name="image")
    views = BothViews(name="mirror")(inputs) if flip_average else inputs

    def member_logits(network: keras.Model, name: str):
        return ViewMean(name=f"{name}_views", dtype="float32")(network(views)) if flip_average else network(inputs)

    logits = member_logits(logits_model, "network")
    if probe is not None:
        weighted = [
            layers.Rescaling(network_weight, name="network_share")(logits),
            layers.Rescaling(1.0 - network_weight, name="probe_share")(member_logits(probe, "probe")),
        ]
        logits = layers.Add(name="ensemble_logits", dtype="float32")(weighted)
    probabilities = layers.Activation("sigmoid", name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, probabilities, name="multitag")


def probe_features(frozen_extractor: keras.Model, input_size: int) -> keras.Model:
    """The model's input images -> the frozen extractor's features, resized (bilinear) to the
    extractor's own input size first: a probe can see the photos larger than the network does
    (on voc-real, 224 px arrays read at 384 px gave the best probe on validation)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    probe_size = int(frozen_extractor.input_shape[1])
    resized = inputs if probe_size == input_size else layers.Resizing(probe_size, probe_size, name="probe_resize")(inputs)
    features = keras.Model(inputs, frozen_extractor(resized), name="probe_features")
    features.trainable = False
    return features


def probe_branch(features: keras.Model, kernel, bias) -> keras.Model:
    """Frozen ImageNet features -> a linear probe's logits, with weights fitted by scikit-learn."""
    inputs = keras.Input(features.input_shape[1:], name="image")
    dense = layers.Dense(int(kernel.shape[1]), name="probe_logits")
    branch = keras.Model(inputs, dense(features(inputs)), name="probe_branch")
    dense.set_weights([kernel, bias])
    branch.trainable = False
    return branch


def unfreeze_top(feature_extractor: keras.Model, n_layers: int) -> None:
    """Make the top `n_layers` of the backbone trainable; BatchNorm stays frozen (inference mode)."""
    backbone = next(layer for layer in feature_extractor.layers if isinstance(layer, keras.Model))
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        in_top = index >= len(backbone.layers) - n_layers
        layer.trainable = in_top and not isinstance(layer, layers.BatchNormalization)
