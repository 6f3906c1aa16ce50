"""Preprocessing stage: decode and resize every valid image into uint8 `.npy` arrays per split.

Rows are streamed into memory-mapped files by worker processes, each writing its own rows, so
memory stays flat whatever the number of images, and nothing is ever held as float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.config import PreprocessParams, ResizeMode
from multitag.data import manifest, splits
from multitag.data.images import ImageError, decode_file, difference_hash, informative_hash
from multitag.data.manifest import SPLITS
from multitag.data.parallel import chunks, run_chunks
from multitag.data.summary import ProcessedSummary
from multitag.errors import MissingInputError, MultitagError

ROWS_PER_TASK = 32


@dataclass(frozen=True)
class _Job:
    """One batch of rows for a worker: where to read the images and which rows to fill."""

    x_path: str
    rows: Sequence[tuple[int, str]]
    size: int
    mode: ResizeMode


def preprocess(
    manifest_path: Path, classes_path: Path, out_dir: Path, params: PreprocessParams, frozen_test_path: Path, dataset: str = "default"
) -> ProcessedSummary:
    """Split the validated manifest and write `<split>_x.npy`, `<split>_y.npy`, classes and manifest.

    `dataset` names whose frozen test set applies (splits.dataset_key); an empty split is an error.
    """
    frame = manifest.read(manifest_path)
    classes = manifest.read_classes(classes_path)
    frozen = splits.read_frozen_test(frozen_test_path, dataset)
    if frozen is None:
        splits.refuse_silent_redraw(out_dir, frozen_test_path, dataset)
    elsewhere = (splits.read_frozen_test(frozen_test_path) or set()) - (frozen or set())
    frame["split"] = splits.assign_splits(
        frame, classes, params.split_ratios, params.seed, frozen, elsewhere, params.keep_source_splits, params.feedback_test_share
    )
    splits.require_nonempty(frame, dataset, params.split_ratios, len(frozen) if frozen is not None else None)
    refuse_partial_outside_train(frame)
    splits.write_frozen_test(frame, frozen_test_path, dataset, test_fingerprints(frame))
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        rows = frame[frame["split"] == split].reset_index(drop=True)
        write_split(rows, classes, out_dir, split, params)
        counts[split] = len(rows)
    summary = ProcessedSummary(dataset, params.image_size, params.resize, classes, counts, splits.corrections_in_test(frame))
    manifest.write(frame, out_dir / "manifest.parquet")
    manifest.write_classes(classes, out_dir / "classes.json")
    summary.write(out_dir)
    return summary


def test_fingerprints(frame: pd.DataFrame) -> dict[str, int]:
    """{sha256: difference hash} of the test rows: what the leakage check compares corrections with
    (a re-encoded or resized copy of a test photo has another sha256 but nearly the same hash)."""
    test = frame[frame["split"] == "test"]
    hashes = zip(test["sha256"], map(difference_hash, test["path"]))
    return {sha: value for sha, value in hashes if informative_hash(value)}


def write_split(rows: pd.DataFrame, classes: list[str], out_dir: Path, split: str, params: PreprocessParams) -> None:
    """Allocate the memmap, let workers fill it in place, then write the label matrix."""
    x_path = out_dir / f"{split}_x.npy"
    shape = (len(rows), params.image_size, params.image_size, 3)
    np.lib.format.open_memmap(x_path, mode="w+", dtype=np.uint8, shape=shape).flush()
    jobs = [_Job(str(x_path), batch, params.image_size, params.resize) for batch in chunks(list(enumerate(rows["path"])), ROWS_PER_TASK)]
    run_chunks(_fill_rows, jobs, len(rows), min(params.workers, os.cpu_count() or 1), f"Preprocessing {split}")
    unknown = rows["unknown"] if split == "train" else None  # refuse_partial_outside_train: elsewhere there is none
    np.save(out_dir / f"{split}_y.npy", manifest.label_matrix(rows["labels"], classes, unknown))


def refuse_partial_outside_train(frame: pd.DataFrame) -> None:
    """Validation keeps partial labels in train and splitting pins them there; only an image frozen
    in a test split can still take one elsewhere, and a test set must not guess its unknown classes."""
    outside = frame[(frame["unknown"].map(len) > 0) & (frame["split"] != "train")]
    if len(outside):
        names = ", ".join(f"{row.image_id} ({row.split})" for row in outside.head(5).itertuples())
        raise MultitagError(
            f"{len(outside)} image(s) with unknown classes (partial labels) would be in val or test: {names}. Their content is "
            "frozen in a test split, so they cannot train either: label them in full (an `absent` of `*`) or drop them from the source."
        )


def _fill_rows(job: _Job) -> int:
    """Worker: decode this job's images straight into their rows of the shared memmap."""
    array = np.load(job.x_path, mmap_mode="r+")
    for row, path in job.rows:
        try:
            array[row] = decode_file(path, job.size, job.mode)
        except (ImageError, OSError) as err:
            raise MultitagError(f"{path} passed validation but cannot be preprocessed ({err}); re-run `multitag data validate`") from err
    del array  # a shared mapping: the rows are in the page cache for every reader, no flush needed
    return len(job.rows)


def load_split(processed_dir: Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (N,H,W,3), y uint8 (N,C)) of one split; x memory-mapped by default."""
    x_path = processed_dir / f"{split}_x.npy"
    if not x_path.exists():
        raise MissingInputError(f"{x_path} not found: run `multitag data preprocess` (or `dvc repro preprocess`) first")
    return np.load(x_path, mmap_mode="r" if mmap else None), np.load(processed_dir / f"{split}_y.npy")
