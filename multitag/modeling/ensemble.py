"""Scoring the served model member by member, each member's outputs cached by content hash.

The served model (models.with_sigmoid) is a fine-tuned network plus, on pretrained backbones, a
linear probe on frozen ImageNet features read at a larger size, each averaged over the image and
its mirror image. Scored as one graph, every evaluation recomputes both members for every photo,
although most photos and most members have not changed since the last run:

- the probe's frozen features of a photo never change (the 384 px pass, ~2/3 of the ensemble's
  cost on 2 cores), so an evaluation after a retraining reuses those of every val/test photo;
- the quick path (retrain --quick) keeps the champion's network as it is, so its logits on every
  photo are the champion's, already computed when the champion was evaluated.

So `scores` takes the graph apart (`members`), gets each member's view-averaged output from the
feature cache (feature_cache.py, keyed by the member's weights and input sizes and each photo's
pixels), computes only what is missing, and adds them up as the graph does. The result equals the
graph's answer to float32 rounding (tests/test_ensemble.py); the gate's TFLite parity check,
which compares the whole exported graph with these scores on every test photo, proves it again
on each candidate. A model of another shape is scored as one graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from multitag.modeling.batches import extract_features, flip_averaged_features
from multitag.modeling.feature_cache import cached_features, member_file


@dataclass(frozen=True)
class Members:
    """The served model's parts as models.with_sigmoid put them together."""

    network: keras.Model  # images -> the fine-tuned network's logits ("multitag_logits")
    flip: bool  # each member also reads the mirror image, and the two outputs are averaged
    probe_features: keras.Model | None = None  # images -> frozen features, before the probe's Dense
    probe_kernel: np.ndarray | None = None
    probe_bias: np.ndarray | None = None
    network_weight: float = 1.0  # the network's share of the logits; the probe has the rest


def members(served: keras.Model) -> Members | None:
    """`served` taken apart by the names with_sigmoid gives its layers; None for another shape (or
    anything that is not a Keras model: a TFLite model, a stand-in that only answers predict_on_batch)."""
    if not isinstance(served, keras.Model):
        return None
    names = {layer.name for layer in served.layers}
    if "multitag_logits" not in names or "probabilities" not in names:
        return None
    network, flip = served.get_layer("multitag_logits"), "mirror" in names
    if "probe_branch" not in names:
        return Members(network, flip)
    branch = served.get_layer("probe_branch")
    kernel, bias = branch.get_layer("probe_logits").get_weights()
    share = float(served.get_layer("network_share").scale)
    return Members(network, flip, branch.get_layer("probe_features"), kernel, bias, share)


def view_averaged(model: keras.Model, x: np.ndarray, flip: bool) -> np.ndarray:
    """`model`'s outputs for each image, averaged with its mirror image's when `flip` (float64)."""
    return flip_averaged_features(model, x) if flip else extract_features(model, x, 32).astype("float64")


def member_outputs(model: keras.Model, x: np.ndarray, flip: bool, cache: Path | None) -> np.ndarray:
    """A member's view-averaged outputs, read from `cache` for photos it has seen before."""
    path = None if cache is None else member_file(cache, model, int(x.shape[1]), flip)
    return cached_features(path, x, lambda rows: view_averaged(model, rows, flip))[0]


def scores(served: keras.Model, x: np.ndarray, cache: Path | None) -> np.ndarray | None:
    """The served model's probabilities for uint8 images (N, C), member by member; None when the
    model is not of with_sigmoid's shape (then score it as one graph)."""
    parts = members(served)
    if parts is None:
        return None
    if not len(x):
        return np.zeros((0, int(served.output_shape[-1])))
    logits = member_outputs(parts.network, x, parts.flip, cache)
    if parts.probe_features is not None:
        features = member_outputs(parts.probe_features, x, parts.flip, cache)
        probe = features @ parts.probe_kernel.astype("float64") + parts.probe_bias.astype("float64")
        logits = parts.network_weight * logits + (1.0 - parts.network_weight) * probe
    return 1.0 / (1.0 + np.exp(-logits))
