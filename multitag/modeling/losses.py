"""What training optimises and what it sees: the from-logits multi-label losses (plain, positive-
weighted or asymmetric BCE, each masking the unknown entries of partial labels) and the
augmentation that is active only while training."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from multitag.data.manifest import UNKNOWN


def positive_weights(y: np.ndarray, cap: float = 20.0) -> np.ndarray:
    """neg/pos per class, capped: rare classes count more without one class dominating the loss.
    Unknown entries (partial labels) are neither."""
    positives = (y == 1).sum(axis=0).astype("float64")
    negatives = (y == 0).sum(axis=0).astype("float64")
    return np.clip(negatives / np.maximum(positives, 1.0), 1.0, cap).astype("float32")


def make_loss(kind: str, pos_weight: np.ndarray):
    """From-logits multi-label loss: plain, positive-weighted BCE, or asymmetric (ASL).

    Every kind masks unknown entries (manifest.UNKNOWN, partial labels in train): they add nothing
    to the loss nor to its gradient, and each known entry weighs what it weighs in a fully labelled
    image (the per-image sum over known classes divided by the number of classes), so fully
    labelled data trains exactly as before.
    """
    weight = tf.constant(pos_weight if kind == "positive_weights" else np.ones_like(pos_weight))

    def known(y_true):
        """(targets with unknown entries set to 0, the mask of known entries), both float32."""
        y_true = tf.cast(y_true, tf.float32)
        mask = tf.cast(tf.not_equal(y_true, float(UNKNOWN)), tf.float32)
        return y_true * mask, mask

    def weighted_bce(y_true, logits):
        y_true, mask = known(y_true)
        logits = tf.cast(logits, tf.float32)
        per_class = tf.nn.weighted_cross_entropy_with_logits(y_true, logits, weight)
        return tf.reduce_mean(per_class * mask, axis=-1)

    def asymmetric(y_true, logits, gamma_neg: float = 4.0, clip: float = 0.05):
        y_true, mask = known(y_true)
        logits = tf.cast(logits, tf.float32)
        p = tf.sigmoid(logits)
        p_neg = tf.maximum(p - clip, 0.0)
        loss_pos = y_true * tf.math.log_sigmoid(logits)
        loss_neg = (1 - y_true) * tf.pow(p_neg, gamma_neg) * tf.math.log(tf.clip_by_value(1 - p_neg, 1e-8, 1.0))
        return -tf.reduce_mean((loss_pos + loss_neg) * mask, axis=-1)

    return asymmetric if kind == "asymmetric" else weighted_bce


def augmentation(seed: int) -> keras.Sequential:
    """Flips, crops (zoom in) and colour jitter; active only while training.

    No shifts with reflected borders: mirrored copies of objects at the edge would add objects
    that the labels do not have.
    """
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomZoom((-0.1, 0.0), seed=seed + 1),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomContrast(0.1, seed=seed + 4),
        ],
        name="augment",
    )
