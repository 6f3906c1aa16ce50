"""Frozen-backbone features, cached by the content hash of the pixels they were computed from.

The probe member of the served ensemble is a logistic regression on frozen ImageNet features
of every training photo, both views, at the probe's resolution: on voc-real the most expensive
pass of a training run after fine-tuning. A nightly retraining adds a few hundred corrections
to a thousand photos it has already seen, and the frozen backbone gives those the same features
as last night, so only the new photos need the backbone (issue 21, part 2).

The key of a row is a hash of its processed pixels (uint8, as the model reads them), so a change
of image size, resize mode or source photo is a new row, never a stale one; the key of a file is
the extractor's identity (a digest of its weights, its input size, the views, Keras' version),
so the champion's own fine-tuned backbone (the quick path's head) caches as well as ImageNet's. The cache
grows with the distinct photos ever trained on (1,280 float32 a photo for MobileNetV2: 5 KB) and
is safe to delete (`.multitag/features/`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np


def row_hashes(x: np.ndarray) -> list[str]:
    """A content hash per image row: what the features are a function of."""
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).hexdigest() for row in x]


def weights_digest(model: keras.Model) -> str:
    """A hash of a network's weights: two extractors with the same digest give the same features,
    whether the weights came from ImageNet, a seeded random start or last night's champion."""
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def cache_file(root: Path, **identity: object) -> Path:
    """The file of one extractor's features: a hash of what makes its features what they are."""
    described = json.dumps({**identity, "keras": keras.__version__}, sort_keys=True, default=str)
    return root / f"{hashlib.sha256(described.encode()).hexdigest()[:24]}.npz"


def input_sizes(model: keras.Model) -> list[int]:
    """Every input size inside `model`, nested models included (the probe reads 224 px arrays at
    384 px): with the weights, what its outputs depend on. Two sizes of one backbone share weights."""
    nested = [input_sizes(layer) for layer in model.layers if isinstance(layer, keras.Model)]
    return sorted({int(model.input_shape[1]), *(size for sizes in nested for size in sizes)})


def member_file(root: Path, model: keras.Model, image_size: int, flip: bool) -> Path:
    """The cache file of one member of the served model (modeling/ensemble.py): its view-averaged
    outputs on `image_size` px arrays."""
    return cache_file(root, member=weights_digest(model), sizes=input_sizes(model), image=image_size, views="flip" if flip else "plain")


def cached_features(path: Path | None, x: np.ndarray, extract: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
    """`extract(x)`, computing only the rows whose pixels `path` has no features for, and saving
    those; without a path, everything is computed. Returns (features, rows computed now)."""
    if path is None:
        return extract(x), len(x)
    hashes = row_hashes(x)
    known = _load(path)
    missing = [i for i, key in enumerate(hashes) if key not in known]
    if missing:
        fresh = extract(np.asarray(x)[missing])
        known.update((hashes[i], fresh[k]) for k, i in enumerate(missing))
        _save(path, known)
    return np.stack([known[key] for key in hashes]), len(missing)


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as stored:
        return dict(zip(stored["hashes"].tolist(), stored["features"]))


def _save(path: Path, features: dict[str, np.ndarray]) -> None:
    """Write beside, then rename: a reader never sees half a file, and a killed run loses only its own rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, hashes=np.array(list(features)), features=np.stack(list(features.values())))
    os.replace(partial, path)
