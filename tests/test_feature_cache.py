"""Frozen features cached by content hash (issue 21, part 2): a nightly computes the backbone
only for photos it has not seen, and a changed photo is never served a stale feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multitag.modeling.feature_cache import cache_file, cached_features


class CountingExtractor:
    """A stand-in backbone with known features (the per-image channel means), counting its rows."""

    def __init__(self):
        self.rows = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.rows += len(x)
        return np.asarray(x, dtype="float32").mean(axis=(1, 2))


def images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_only_photos_not_seen_before_go_through_the_backbone_and_the_features_are_the_same(tmp_path: Path):
    path = cache_file(tmp_path, backbone="mobilenetv2", weights="imagenet", size=384)
    seen, new = images(0, 30), images(1, 5)
    extract = CountingExtractor()
    _, computed = cached_features(path, seen, extract)
    assert computed == 30 and extract.rows == 30
    nightly = np.concatenate([new[:2], seen[::-1], new[2:]])  # another order, with five new photos
    features, computed = cached_features(path, nightly, extract)
    assert computed == 5 and extract.rows == 35, "the 30 photos seen before were read from the cache"
    np.testing.assert_allclose(features, CountingExtractor()(nightly))


def test_a_changed_photo_or_another_extractor_is_computed_again(tmp_path: Path):
    photos = images(2, 4)
    extract = CountingExtractor()
    cached_features(cache_file(tmp_path, backbone="mobilenetv2", size=384), photos, extract)
    edited = photos.copy()
    edited[0, 0, 0, 0] ^= 1  # one pixel of one photo
    features, computed = cached_features(cache_file(tmp_path, backbone="mobilenetv2", size=384), edited, extract)
    assert computed == 1
    np.testing.assert_allclose(features, CountingExtractor()(edited))
    _, computed = cached_features(cache_file(tmp_path, backbone="mobilenetv2", size=320), photos, extract)
    assert computed == 4, "another input size is another extractor"
    _, computed = cached_features(None, photos, extract)
    assert computed == 4, "no cache: everything is computed"
