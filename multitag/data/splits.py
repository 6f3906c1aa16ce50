"""Deterministic multi-label stratified splits, with a frozen test split.

Each dataset's test split is made once and frozen in `frozen_test.json` (content hashes, one set
per dataset). Later runs put every frozen image back in test, never draw new test images for a
dataset that has a set, and so never leak test content into training, whatever the source or
the feedback adds. A new dataset (say your own photos after the shapes demo) gets its own
stratified test split; images frozen for any dataset stay out of training everywhere.

Users' corrections make the test split grow: a fixed share of the fully labelled ones, chosen by
content hash (`joins_test`), is test instead of train/val, and freezes there like any test image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from multitag.config import SplitRatios
from multitag.data.manifest import FEEDBACK_SOURCE as FEEDBACK
from multitag.data.manifest import label_matrix
from multitag.data.summary import ProcessedSummary
from multitag.errors import MissingInputError, MultitagError
from multitag.reports import write_json

LEGACY = "legacy"  # the dataset name of a frozen_test.json written before sets were per dataset


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


def joins_test(sha256: str, share: float) -> bool:
    """Whether a fully labelled correction of this content belongs to the test split: a stable
    choice of about `share` of all contents, the same in every run and on every replica. It reads
    hash digits 8-15, so it is independent of the train/val choice the feedback export makes
    from digits 0-7 (multitag.feedback.retraining.feedback_split)."""
    return int(sha256[8:16], 16) / 2**32 < share


def assign_splits(
    frame: pd.DataFrame,
    classes: list[str],
    ratios: SplitRatios,
    seed: int,
    frozen_test: set[str] | None,
    frozen_elsewhere: frozenset[str] | set[str] = frozenset(),
    keep_source_splits: bool = True,
    feedback_test_share: float = 0.0,
) -> pd.Series:
    """Final split of every row.

    1. Rows whose hash is in this dataset's frozen test set, or in any other dataset's, or that
       the source puts in test, are test; so are the fully labelled corrections (feedback rows
       without unknown classes) that `joins_test` picks by `feedback_test_share`. If this
       dataset has no frozen set yet and the source gave no test split, a stratified
       `ratios.test` share of its own rows (never feedback) becomes test.
    2. Rows with a source split keep it, unless `keep_source_splits` is off: then the source's
       train/val rows are re-stratified by `ratios` (feedback keeps the split its export fixed).
       Rows with unknown classes (partial labels) train, whatever else 2. would say: validation
       and test need every class's answer.
    """
    split = frame["split"].fillna("").copy()
    if not keep_source_splits:
        split[split.isin(["train", "val"]) & (frame["source"] != FEEDBACK)] = ""
    partial = frame["unknown"].map(len).to_numpy() > 0 if "unknown" in frame else np.zeros(len(frame), dtype=bool)
    split[partial] = "train"
    feedback = (frame["source"] == FEEDBACK).to_numpy()
    corrections_for_test = feedback & ~partial & frame["sha256"].map(lambda sha: joins_test(sha, feedback_test_share)).to_numpy(bool)
    split[corrections_for_test] = "test"
    split[frame["sha256"].isin(set(frozen_test or ()) | set(frozen_elsewhere))] = "test"
    if frozen_test is None and not ((split == "test") & ~feedback).any() and ratios.test > 0:
        own = np.flatnonzero(~feedback & ~partial)
        picked = stratified_pick(label_matrix(frame["labels"].iloc[own], classes), ratios.test, seed)
        split.iloc[own[picked]] = "test"
    unsplit = np.flatnonzero(split.to_numpy() == "")
    if len(unsplit):
        val_share = ratios.val / (ratios.train + ratios.val)
        to_val = stratified_pick(label_matrix(frame["labels"].iloc[unsplit], classes), val_share, seed + 1)
        split.iloc[unsplit] = np.where(to_val, "val", "train")
    return split


def corrections_in_test(frame: pd.DataFrame) -> int:
    """How many test rows of a split manifest are users' corrections (none in a manifest that
    names no sources)."""
    if "source" not in frame:
        return 0
    return int(((frame["split"] == "test") & (frame["source"] == FEEDBACK)).sum())


def dataset_key(source: str, path: Path | str) -> str:
    """Which dataset a frozen test set belongs to: the source kind and its folder as configured."""
    return f"{source}:{os.path.normpath(str(path))}"


def _read_all(path: Path) -> dict[str, dict[str, list[str]]]:
    """Every dataset's frozen set; a file from before per-dataset sets counts as one dataset."""
    if not path.exists():
        return {}
    stored = json.loads(path.read_text())
    return stored.get("datasets", {LEGACY: stored})


def read_frozen_test(path: Path, dataset: str | None = None) -> set[str] | None:
    """The frozen test hashes of `dataset` (None before its first split was made), or with no
    dataset named the union over every dataset: the set no training image may come from."""
    stored = _read_all(path)
    if dataset is not None:
        return set(stored[dataset]["sha256"]) if dataset in stored else None
    return {sha for entry in stored.values() for sha in entry["sha256"]} if stored else None


def frozen_from_corrections(path: Path) -> set[str]:
    """The frozen test hashes a user's correction put there (splits.joins_test), over every dataset:
    a later full labelling of one goes to test again, so it is no leak."""
    prefix = f"{FEEDBACK}-"
    return {
        sha
        for entry in _read_all(path).values()
        for sha, image_id in zip(entry["sha256"], entry["image_id"])
        if image_id.startswith(prefix)
    }


def write_frozen_test(frame: pd.DataFrame, path: Path, dataset: str, fingerprints: Mapping[str, int] | None = None) -> None:
    """Freeze this dataset's test split: its set only ever grows, so no image leaves test; the
    other datasets' sets are kept as they are. `fingerprints` ({sha256: difference hash}) are
    stored beside the hashes, so that a near-duplicate of a test photo is caught as leakage too
    (frozen_fingerprints); a hash stored before is kept."""
    stored = _read_all(path)
    previous = stored.get(dataset, {"image_id": [], "sha256": []})
    frozen = dict(zip(previous["sha256"], previous["image_id"]))
    hashes = {sha: int(value, 16) for sha, value in zip(previous["sha256"], previous.get("dhash", [])) if value}
    test = frame[frame["split"] == "test"]
    frozen.update({sha: frozen.get(sha, image_id) for sha, image_id in zip(test["sha256"], test["image_id"])})
    hashes = {**(fingerprints or {}), **hashes}
    ordered = sorted(frozen.items())
    stored[dataset] = {
        "image_id": [i for _, i in ordered],
        "sha256": [s for s, _ in ordered],
        "dhash": [f"{hashes[s]:016x}" if s in hashes else "" for s, _ in ordered],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"datasets": stored})


def frozen_fingerprints(path: Path) -> dict[int, str]:
    """{difference hash: sha256} of every frozen test photo that has one, over every dataset."""
    return {
        int(value, 16): sha for entry in _read_all(path).values() for sha, value in zip(entry["sha256"], entry.get("dhash", [])) if value
    }


def refuse_silent_redraw(processed: Path, frozen_test_path: Path, dataset: str) -> None:
    """A dataset without a frozen set gets a new test split, unless the processed data shows it
    was split before (its summary names the dataset): then the set was lost (deleted, or never
    restored from DVC), and drawing again would move test images into training and change every
    model's test numbers."""
    summary = ProcessedSummary.read(processed)
    if summary is None or summary.dataset != dataset:
        return
    raise MissingInputError(
        f"{frozen_test_path} has no frozen test split for {dataset}, but {processed} was split from it before: "
        f"restore the file (`dvc checkout {frozen_test_path}`, or from your backup) so the same photos stay in test; "
        f"to draw a new test split on purpose, delete {processed} first (every model's test numbers then change)"
    )


class EmptySplitError(MultitagError, ValueError):
    """A split came out empty; the message says why and what to change."""


def require_nonempty(frame: pd.DataFrame, dataset: str, ratios: SplitRatios, frozen_count: int | None) -> None:
    """Refuse to write a split with no images: every later stage would fail less clearly."""
    counts = frame["split"].value_counts()
    for split in ("train", "val", "test"):
        if counts.get(split, 0):
            continue
        if split == "test" and frozen_count:
            why = (
                f"none of the {frozen_count} frozen test images of {dataset} are in the validated data (the dataset "
                "changed under the same path?); remove its entry from data/frozen_test.json to draw a new test split"
            )
        elif split == "test" and ratios.test == 0:
            why = "preprocess.split_ratios.test is 0 and the source has no test split"
        else:
            why = f"only {len(frame)} valid images; add images or change preprocess.split_ratios"
        raise EmptySplitError(f"the {split} split of {dataset} would be empty: {why}")
