"""What the gate judges on: the frozen test split as one model sees it, the model's scores on it
(stored with the model where they apply), and the proof that stored scores are the model's own.

Apart from gate.py, which decides with them, because the test split is a fact of the data
(data/processed), the scores a fact of each logged model (scores.py), and both are read for the
champion and the candidate alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitag.data.summary import ProcessedSummary
from multitag.layout import Layout
from multitag.lifecycle import scores
from multitag.lifecycle.predictor import Predictor

SPOT_CHECK_PHOTOS = 8  # test photos scored through the whole graph to prove a stored table is the model's
SPOT_CHECK_TOLERANCE = 1e-4  # member by member vs the graph: float32 rounding, about 1e-6 (modeling/ensemble.py)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestPhotos:
    """The frozen test split as one model sees it: labels, uint8 pixels, each photo's sha256, and the
    resize mode the pixels were made with (with the size, what a stored score is valid for)."""

    y_true: np.ndarray
    images: np.ndarray
    hashes: list[str]
    resize: str
    cache: Path | None = None  # the feature cache: members' outputs on photos scored before (modeling/ensemble.py)


def test_split(predictor: Predictor, layout: Layout) -> TestPhotos:
    """The frozen test split at the model's own input size: the processed arrays (memory-mapped)
    when their size matches, else the test photos decoded now."""

    from multitag.data.manifest import label_matrix, read
    from multitag.data.preprocess import load_split

    test = read(layout.processed / "manifest.parquet").query("split == 'test'")
    hashes = list(test["sha256"]) if "sha256" in test else [""] * len(test)
    x_test, y_test = load_split(layout.processed, "test")
    if x_test.shape[1] == predictor.input_size:
        summary = ProcessedSummary.read(layout.processed)
        resize = summary.resize if summary else predictor.resize
        return TestPhotos(np.asarray(y_test), x_test, hashes, resize, layout.feature_cache)
    images = np.stack([predictor.decode(Path(path).read_bytes()) for path in test["path"]])
    return TestPhotos(label_matrix(test["labels"], predictor.classes), images, hashes, predictor.resize, layout.feature_cache)


def test_scores(predictor: Predictor, photos: TestPhotos) -> np.ndarray:
    """The model's scores on the test photos: those stored with it (scores.py) where they apply,
    the rest scored now (photos that joined the split since it was scored), member by member
    through the feature cache (evaluate.served_scores: after a quick refit, the champion's members
    have already answered the photos the corrections added)."""
    from multitag.modeling.evaluate import served_scores

    table = scores.stored(predictor.folder) if predictor.folder else None
    if table is None:
        return served_scores(predictor.model, photos.images, photos.cache)
    known, found = table.scores_for(photos.hashes, predictor.classes, int(photos.images.shape[1]), photos.resize)
    missing = np.flatnonzero(~found)
    if len(missing):
        known[missing] = served_scores(predictor.model, np.asarray(photos.images[missing]), photos.cache)
    log.info("%s: %d test scores stored with the model, %d predicted now", predictor.uri, int(found.sum()), len(missing))
    return known


def matches_graph(predictor: Predictor, photos: TestPhotos, scores: np.ndarray) -> bool:
    """Whether `scores` are the model's own on a sample of the test photos, scored now through the
    whole Keras graph (eagerly: no trace for a few photos). Stored scores decide the verdict, so a
    table that is not this model's must never do so; a refused candidate gets no export parity check,
    which checks every photo, so this is its proof."""
    sample = np.asarray(photos.images[:SPOT_CHECK_PHOTOS]).astype("float32")
    if not len(sample):
        return True
    model = predictor.model
    fresh = np.asarray(model(sample, training=False) if callable(model) else model.predict_on_batch(sample), dtype="float64")
    return bool(np.allclose(fresh, scores[: len(sample)], atol=SPOT_CHECK_TOLERANCE))


def corrections_in_test(layout: Layout) -> int:
    """How many photos of the frozen test split are users' corrections."""
    from multitag.data.manifest import read
    from multitag.data.splits import corrections_in_test as count

    return count(read(layout.processed / "manifest.parquet"))
