"""Deterministic multi-label stratified splits, with a frozen test split.

The test split is made once and frozen in `frozen_test.json` (content hashes). Later runs put
every frozen image back in test, never draw new test images, and so never leak test content
into training, whatever the source or the feedback adds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from multitag.config import SplitRatios
from multitag.manifest import label_matrix


def stratified_pick(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing about `fraction` of rows with every class's share preserved."""
    picked = np.zeros(len(labels), dtype=bool)
    if len(labels) < 2 or fraction <= 0:
        return picked
    count = min(max(1, round(fraction * len(labels))), len(labels) - 1)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=count, random_state=seed)
    _, chosen = next(splitter.split(np.zeros(len(labels)), labels))
    picked[chosen] = True
    return picked


def assign_splits(frame: pd.DataFrame, classes: list[str], ratios: SplitRatios, seed: int, frozen_test: set[str] | None) -> pd.Series:
    """Final split of every row.

    1. Rows whose hash is in the frozen test set, or that the source puts in test, are test; if
       there is no frozen set yet and the source gave no test split, a stratified `ratios.test`
       share of all rows becomes test.
    2. Rows with a source split keep it; unsplit rows are stratified into train and val.
    """
    split = frame["split"].fillna("").copy()
    if frozen_test is not None:
        split[frame["sha256"].isin(frozen_test)] = "test"
    elif not (split == "test").any() and ratios.test > 0:
        split[stratified_pick(label_matrix(frame["labels"], classes), ratios.test, seed)] = "test"
    unsplit = np.flatnonzero(split.to_numpy() == "")
    if len(unsplit):
        val_share = ratios.val / (ratios.train + ratios.val)
        to_val = stratified_pick(label_matrix(frame["labels"].iloc[unsplit], classes), val_share, seed + 1)
        split.iloc[unsplit] = np.where(to_val, "val", "train")
    return split


def read_frozen_test(path: Path) -> set[str] | None:
    """The frozen test hashes, or None before the first split was made."""
    return set(json.loads(path.read_text())["sha256"]) if path.exists() else None


def write_frozen_test(frame: pd.DataFrame, path: Path) -> None:
    """Freeze the test split: the file only ever grows, so no image leaves the test split."""
    previous = json.loads(path.read_text()) if path.exists() else {"image_id": [], "sha256": []}
    frozen = dict(zip(previous["sha256"], previous["image_id"]))
    test = frame[frame["split"] == "test"]
    frozen.update({sha: frozen.get(sha, image_id) for sha, image_id in zip(test["sha256"], test["image_id"])})
    ordered = sorted(frozen.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"image_id": [i for _, i in ordered], "sha256": [s for s, _ in ordered]}, indent=1) + "\n")
