"""Code and data tests of preprocessing: array contracts, row alignment, resize modes, the frozen
test split, stratified ratios and determinism."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import colour_for, csv_row, encode, solid, write_bytes, write_csv
from PIL import Image

from multitag.config import DataParams, PreprocessParams, SplitRatios, ValidateParams
from multitag.data import images, manifest
from multitag.data.preprocess import load_split, preprocess
from multitag.data.sources import read_source
from multitag.data.splits import frozen_fingerprints, read_frozen_test
from multitag.data.summary import ProcessedSummary
from multitag.data.validation import validate, write_outputs
from multitag.errors import MissingInputError, MultitagError

CLASSES = ["cat", "dog", "person"]
PREVALENCE = (0.5, 0.3, 0.6)
SIZE = 16
IMAGE_SHAPE = (20, 12)  # width, height: not square, so letterbox and stretch differ


def labels_of(index: int) -> list[str]:
    """A fixed, non-empty label set per image index (independent of the library)."""
    draw = np.random.default_rng(index).random(len(CLASSES))
    names = [name for name, p, u in zip(CLASSES, PREVALENCE, draw) if u < p]
    return names or [CLASSES[index % len(CLASSES)]]


def write_dataset(root: Path, count: int) -> dict[str, list[str]]:
    """`count` unsplit images img_0000.png... with unique colours; returns id -> labels."""
    dataset = {f"img_{i:04d}": labels_of(i) for i in range(count)}
    for image_id in dataset:
        target = root / f"{image_id}.png"
        if not target.exists():
            write_bytes(target, encode(solid(image_id, IMAGE_SHAPE), "PNG"))
    write_csv(root, [csv_row(f"{i}.png", labels) for i, labels in dataset.items()], CLASSES)
    return dataset


def validate_into(dataset_root: Path, validated: Path) -> tuple[Path, Path]:
    result = validate(read_source(DataParams(source="csv", path=dataset_root)), ValidateParams(), workers=2)
    assert result.quarantine.empty
    paths = write_outputs(result, validated)
    return paths["manifest"], paths["classes"]


@dataclass
class Validated:
    root: Path
    dataset: dict[str, list[str]]
    manifest_path: Path
    classes_path: Path

    def preprocess(self, out: Path, frozen: Path | None = None, dataset: str = "csv:dataset", **params) -> ProcessedSummary:
        settings = PreprocessParams(**{"image_size": SIZE, "workers": 2, **params})
        return preprocess(self.manifest_path, self.classes_path, out, settings, frozen or out.parent / f"{out.name}_frozen.json", dataset)


def make_validated(root: Path, count: int) -> Validated:
    dataset = write_dataset(root / "dataset", count)
    return Validated(root, dataset, *validate_into(root / "dataset", root / "validated"))


@pytest.fixture(scope="module")
def hundred(tmp_path_factory) -> Validated:
    """100 validated unsplit images, shared by the tests that only read it."""
    return make_validated(tmp_path_factory.mktemp("hundred"), 100)


def processed_splits(out: Path) -> dict[str, pd.DataFrame]:
    frame = manifest.read(out / "manifest.parquet")
    return {split: frame[frame["split"] == split].reset_index(drop=True) for split in ("train", "val", "test")}


def test_arrays_follow_the_contract(hundred, tmp_path):
    summary = hundred.preprocess(tmp_path / "processed")
    out = tmp_path / "processed"
    assert manifest.read_classes(out / "classes.json") == CLASSES
    assert list(manifest.read(out / "manifest.parquet").columns) == manifest.COLUMNS
    assert ProcessedSummary.read(out) == summary, "the summary reads back as it was written"
    total = 0
    for split, rows in processed_splits(out).items():
        x, y = load_split(out, split)
        assert isinstance(x, np.memmap), "x is memory-mapped, never loaded whole by default"
        assert x.dtype == np.uint8 and x.shape == (len(rows), SIZE, SIZE, 3)
        assert y.dtype == np.uint8 and y.shape == (len(rows), len(CLASSES))
        assert summary.splits[split] == len(rows) > 0
        total += len(rows)
    assert total == len(hundred.dataset)


def test_label_matrix_and_pixels_follow_the_manifest_rows(hundred, tmp_path):
    """Row i of <split>_y and <split>_x is the i-th image of that split in the processed manifest."""
    out = tmp_path / "processed"
    hundred.preprocess(out)
    for split, rows in processed_splits(out).items():
        x, y = load_split(out, split, mmap=False)
        expected_y = np.array([[name in hundred.dataset[i] for name in CLASSES] for i in rows["image_id"]], dtype=np.uint8)
        np.testing.assert_array_equal(y, expected_y)
        assert [sorted(labels) for labels in rows["labels"]] == [sorted(hundred.dataset[i]) for i in rows["image_id"]]
        expected_x = np.array([colour_for(i) for i in rows["image_id"]], dtype=int)[:, None, None, :]
        assert np.abs(x.astype(int) - expected_x).max() <= 1, f"{split}: pixels are not in manifest order"


def test_letterbox_pads_and_stretch_fills(hundred, tmp_path):
    hundred.preprocess(tmp_path / "stretch", resize="stretch")
    hundred.preprocess(tmp_path / "letterbox", resize="letterbox")
    # 20x12 into 16: letterbox scales by 0.8 to 16x10 and centres it, 3 black rows above and below
    for split, rows in processed_splits(tmp_path / "stretch").items():
        colours = np.array([colour_for(i) for i in rows["image_id"]], dtype=int)[:, None, None, :]
        stretched = load_split(tmp_path / "stretch", split)[0].astype(int)
        boxed = load_split(tmp_path / "letterbox", split)[0].astype(int)
        assert np.abs(stretched - colours).max() <= 1
        assert (boxed[:, :3] == 0).all() and (boxed[:, 13:] == 0).all()
        assert np.abs(boxed[:, 4:12] - colours).max() <= 1
    portrait = images.decode(encode(solid("portrait", (12, 20)), "PNG"), SIZE, "letterbox").astype(int)
    assert (portrait[:, :3] == 0).all() and (portrait[:, 13:] == 0).all()
    assert np.abs(portrait[:, 4:12] - colour_for("portrait")).max() <= 1


def test_frozen_test_split_survives_new_images(tmp_path):
    first = make_validated(tmp_path, 100)
    out, frozen = tmp_path / "processed", tmp_path / "frozen_test.json"
    first.preprocess(out, frozen)
    before = processed_splits(out)["test"]
    assert len(before) > 0
    assert read_frozen_test(frozen) == set(before["sha256"])

    grown = make_validated(tmp_path, 140)  # 40 new unsplit images; same work folders, as in `dvc repro`
    grown.preprocess(out, frozen, seed=7)  # even a new seed must not move the test split
    after = processed_splits(out)
    new_ids = set(grown.dataset) - set(first.dataset)
    assert set(before["image_id"]) <= set(after["test"]["image_id"]), "a test image left the test split"
    assert not new_ids & set(after["test"]["image_id"]), "a new image entered the frozen test split"
    assert new_ids <= set(after["train"]["image_id"]) | set(after["val"]["image_id"])
    assert not set(after["test"]["sha256"]) & (set(after["train"]["sha256"]) | set(after["val"]["sha256"]))
    assert read_frozen_test(frozen) == set(before["sha256"])


def test_frozen_hash_wins_over_a_source_split(hundred, tmp_path):
    """Content hashed into the frozen test split stays in test even when the source now says train."""
    out, frozen = tmp_path / "processed", tmp_path / "frozen_test.json"
    hundred.preprocess(out, frozen)
    test_ids = set(processed_splits(out)["test"]["image_id"])
    relabelled = manifest.read(hundred.manifest_path)
    relabelled["split"] = "train"
    moved = Validated(hundred.root, hundred.dataset, manifest.write(relabelled, tmp_path / "relabelled.parquet"), hundred.classes_path)
    moved.preprocess(tmp_path / "again", frozen)
    again = processed_splits(tmp_path / "again")
    assert set(again["test"]["image_id"]) == test_ids
    assert len(again["train"]) + len(again["val"]) == len(hundred.dataset) - len(test_ids)


def test_source_train_and_val_are_resplit_unless_kept(tmp_path):
    """Photos: the source's train/val split is redrawn by split_ratios (more images to train on)."""
    validated = make_validated(tmp_path, 100)
    sourced = manifest.read(validated.manifest_path)
    sourced["split"] = np.where(np.arange(len(sourced)) < 50, "train", "val")  # a 50/50 source split
    resplit = Validated(validated.root, validated.dataset, manifest.write(sourced, tmp_path / "sourced.parquet"), validated.classes_path)
    counts = resplit.preprocess(tmp_path / "resplit").splits
    assert counts["train"] > 2 * counts["val"] and counts["test"] > 0
    kept = resplit.preprocess(tmp_path / "kept", keep_source_splits=True).splits
    kept_splits = processed_splits(tmp_path / "kept")
    original = dict(zip(sourced["image_id"], sourced["split"]))
    assert all(original[i] == "train" for i in kept_splits["train"]["image_id"]) and kept["val"] > 0


def test_a_new_dataset_gets_its_own_frozen_test_split(tmp_path):
    """After the demo, your own data: its own stratified test split, none of the first's images."""
    frozen = tmp_path / "frozen_test.json"
    demo = make_validated(tmp_path / "demo", 80)
    demo.preprocess(tmp_path / "demo_processed", frozen, dataset="synthetic:data/raw/synthetic")
    demo_test = read_frozen_test(frozen, "synthetic:data/raw/synthetic")

    # a different dataset whose images are all new (other colours: ids start at 500)
    own_root = tmp_path / "own" / "dataset"
    dataset = {f"img_{i:04d}": labels_of(i) for i in range(500, 600)}
    for image_id in dataset:
        write_bytes(own_root / f"{image_id}.png", encode(solid(image_id, IMAGE_SHAPE), "PNG"))
    write_csv(own_root, [csv_row(f"{i}.png", labels) for i, labels in dataset.items()], CLASSES)
    own = Validated(tmp_path / "own", dataset, *validate_into(own_root, tmp_path / "own" / "validated"))
    counts = own.preprocess(tmp_path / "own_processed", frozen, dataset="csv:own").splits
    own_test = processed_splits(tmp_path / "own_processed")["test"]
    assert counts["test"] == len(own_test) >= 10, counts
    assert set(own_test["image_id"]) <= set(dataset), "a demo image is in the new dataset's test split"
    assert read_frozen_test(frozen, "synthetic:data/raw/synthetic") == demo_test, "the demo's frozen set changed"
    assert read_frozen_test(frozen) == demo_test | set(own_test["sha256"])
    again = own.preprocess(tmp_path / "own_again", frozen, dataset="csv:own", seed=3)
    assert (
        set(processed_splits(tmp_path / "own_again")["test"]["image_id"]) == set(own_test["image_id"])
        and again.splits["test"] == counts["test"]
    )


def test_a_frozen_test_set_that_matches_no_image_is_an_error_not_an_empty_split(tmp_path):
    from multitag.data.splits import EmptySplitError

    frozen = tmp_path / "frozen_test.json"
    first = make_validated(tmp_path / "first", 60)
    first.preprocess(tmp_path / "first_processed", frozen, dataset="csv:data")
    replaced = make_validated(tmp_path / "second", 60)  # same ids and colours -> same hashes...
    relabelled = manifest.read(replaced.manifest_path)
    relabelled["sha256"] = relabelled["sha256"].str[::-1]  # ...so pretend every image changed
    changed = Validated(replaced.root, replaced.dataset, manifest.write(relabelled, tmp_path / "changed.parquet"), replaced.classes_path)
    with pytest.raises(EmptySplitError, match=r"none of the .* frozen test images of csv:data"):
        changed.preprocess(tmp_path / "changed_processed", frozen, dataset="csv:data")
    with pytest.raises(EmptySplitError, match=r"test split .* is 0"):
        first.preprocess(tmp_path / "no_test", tmp_path / "other.json", split_ratios=SplitRatios(train=0.8, val=0.2, test=0.0))


def class_shares(rows: pd.DataFrame) -> list[float]:
    """Fraction of rows that have each class, in CLASSES order."""
    return [float(np.mean([name in labels for labels in rows["labels"]])) for name in CLASSES]


def test_stratified_split_honours_the_ratios(tmp_path):
    validated = make_validated(tmp_path, 200)
    ratios = SplitRatios(train=0.6, val=0.2, test=0.2)
    validated.preprocess(tmp_path / "processed", split_ratios=ratios)
    splits = processed_splits(tmp_path / "processed")
    for split, share in ratios.model_dump().items():
        assert abs(len(splits[split]) - share * 200) <= 3, f"{split}: {len(splits[split])} images"
    overall = class_shares(pd.concat(splits.values()))
    for split, rows in splits.items():
        for name, share, expected in zip(CLASSES, class_shares(rows), overall):
            assert abs(share - expected) <= 0.08, f"{name} in {split}: {share:.2f} vs {expected:.2f} overall"


def test_same_seed_same_split_and_arrays(hundred, tmp_path):
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        hundred.preprocess(tmp_path / name, seed=seed)
    a, b, c = (manifest.read(tmp_path / n / "manifest.parquet").set_index("image_id")["split"] for n in "abc")
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(c), "a different seed should give a different split"
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(load_split(tmp_path / "a", split)[0], load_split(tmp_path / "b", split)[0])


def test_a_lost_frozen_test_split_is_never_redrawn_silently(hundred, tmp_path):
    """Issue 11: with the frozen set gone, the same dataset's next preprocess would draw a new
    test split from every row (training images included). It stops and says how to restore it."""
    frozen, out = tmp_path / "frozen_test.json", tmp_path / "processed"
    hundred.preprocess(out, frozen)
    test_ids = set(processed_splits(out)["test"]["image_id"])
    kept = frozen.read_bytes()
    frozen.unlink()
    with pytest.raises(MissingInputError, match="dvc checkout"):
        hundred.preprocess(out, frozen)
    assert not frozen.exists(), "nothing was re-drawn"
    frozen.write_bytes(kept)  # restored, as `dvc checkout` would
    hundred.preprocess(out, frozen, seed=7)
    assert set(processed_splits(out)["test"]["image_id"]) == test_ids
    frozen.unlink()
    shutil.rmtree(out)  # a new test split on purpose
    hundred.preprocess(out, frozen)
    assert frozen.exists()


# -- corrections grow the frozen test split (issue 21) ---------------------------------------------


def hash_picks(sha256: str, share: float) -> bool:
    """The documented choice, written out here: hash digits 8-15 as a fraction of 2**32, below the share."""
    return int(sha256[8:16], 16) / 2**32 < share


def with_corrections(validated: Validated, path: Path, partial: set[str] | None = None) -> tuple[Validated, set[str], set[str]]:
    """The first 60 images become users' corrections as the feedback export delivers them (train/val
    by the export; every third one partial: `person` unknown, hence train). Returns the manifest's
    Validated and the (full, partial) correction ids."""
    frame = manifest.read(validated.manifest_path)
    is_correction = np.arange(len(frame)) < 60
    frame.loc[is_correction, "source"] = manifest.FEEDBACK_SOURCE
    frame.loc[is_correction, "image_id"] = [f"feedback-fb{i}" for i in range(int(is_correction.sum()))]
    partial = partial if partial is not None else {f"feedback-fb{i}" for i in range(0, 60, 3)}
    is_partial = frame["image_id"].isin(partial).to_numpy()
    frame.loc[is_correction, "split"] = np.where(np.arange(int(is_correction.sum())) % 7 == 0, "val", "train")
    frame.loc[is_partial, "split"] = "train"
    frame["labels"] = [[c for c in labels if c != "person"] or ["cat"] if p else labels for labels, p in zip(frame["labels"], is_partial)]
    frame["unknown"] = [["person"] if p else [] for p in is_partial]
    full = set(frame.loc[is_correction & ~is_partial, "image_id"])
    return Validated(validated.root, validated.dataset, manifest.write(frame, path), validated.classes_path), full, partial


def test_a_share_of_full_corrections_joins_the_frozen_test_split_by_content_hash(hundred, tmp_path):
    source_only, out, frozen = tmp_path / "source_only", tmp_path / "processed", tmp_path / "frozen_test.json"
    hundred.preprocess(source_only, tmp_path / "source_only_frozen.json")
    own_test = set(processed_splits(source_only)["test"]["image_id"])
    corrected, full, partial = with_corrections(hundred, tmp_path / "corrected.parquet")
    sha = dict(zip(*[manifest.read(corrected.manifest_path)[c] for c in ("image_id", "sha256")]))
    assert any(hash_picks(sha[i], 0.5) for i in partial), "the fixture needs a partial correction the hash would pick"

    summary = corrected.preprocess(out, frozen, feedback_test_share=0.5)
    splits = processed_splits(out)
    test_ids = set(splits["test"]["image_id"])
    joined = {i for i in full if hash_picks(sha[i], 0.5)}
    assert 5 <= len(joined) < len(full), "about half the full corrections should join"
    assert test_ids & (full | partial) == joined, "exactly the full corrections the hash picks are test"
    assert not test_ids & partial, "a partial correction never tests"
    assert test_ids - joined, "the source still gets its own stratified test split beside the corrections"
    assert summary.test_from_corrections == len(joined) and summary.splits["test"] == len(test_ids)
    assert {sha[i] for i in joined} <= read_frozen_test(frozen), "joined corrections are frozen"
    trained = set(splits["train"]["sha256"]) | set(splits["val"]["sha256"])
    assert not trained & set(splits["test"]["sha256"]), "a test image trains"
    for split in ("test", "val"):
        assert not (load_split(out, split)[1] == manifest.UNKNOWN).any()

    again = corrected.preprocess(tmp_path / "again", frozen, feedback_test_share=0.5, seed=9)
    assert set(processed_splits(tmp_path / "again")["test"]["image_id"]) == test_ids, "the choice is not stable"
    assert again.test_from_corrections == len(joined)
    lowered = corrected.preprocess(tmp_path / "lowered", frozen, feedback_test_share=0.0)
    after = processed_splits(tmp_path / "lowered")
    assert set(after["test"]["image_id"]) == test_ids and lowered.test_from_corrections == len(joined), "a test image moved out"
    assert not set(after["test"]["sha256"]) & (set(after["train"]["sha256"]) | set(after["val"]["sha256"]))
    unset = hundred.preprocess(tmp_path / "off", tmp_path / "off_frozen.json", feedback_test_share=0.0)
    assert set(processed_splits(tmp_path / "off")["test"]["image_id"]) == own_test and unset.test_from_corrections == 0


def test_a_frozen_correction_never_trains_even_when_it_comes_back_partial(hundred, tmp_path):
    """A correction in the frozen test split stays test in later runs whatever its export row says;
    should its newest labelling be partial, preprocessing stops instead of testing on unknown classes."""
    out, frozen = tmp_path / "processed", tmp_path / "frozen_test.json"
    corrected, full, _ = with_corrections(hundred, tmp_path / "corrected.parquet", partial=set())
    corrected.preprocess(out, frozen, feedback_test_share=0.5)
    joined = set(processed_splits(out)["test"]["image_id"]) & full
    assert joined, "no correction joined the test split"
    later = manifest.read(corrected.manifest_path)
    later.loc[later["image_id"].isin(joined), "split"] = "train"  # as the export writes them every night
    moved = Validated(hundred.root, hundred.dataset, manifest.write(later, tmp_path / "later.parquet"), hundred.classes_path)
    moved.preprocess(tmp_path / "later", frozen, feedback_test_share=0.0)
    assert joined <= set(processed_splits(tmp_path / "later")["test"]["image_id"])
    one = sorted(joined)[0]
    later.loc[later["image_id"] == one, "unknown"] = pd.Series([["person"]], index=later.index[later["image_id"] == one])
    partial_now = Validated(hundred.root, hundred.dataset, manifest.write(later, tmp_path / "partial.parquet"), hundred.classes_path)
    with pytest.raises(MultitagError, match="unknown classes"):
        partial_now.preprocess(tmp_path / "partial", frozen)


def blob_photo(seed: int, side: int = 96) -> Image.Image:
    """A photo-like image per seed: smooth random blobs, whose difference hash survives a resize."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)


def test_a_near_duplicate_of_a_test_photo_is_rejected_as_leakage(tmp_path):
    """A re-encoded, resized copy of a frozen test photo has another sha256: the exact-hash check
    let it train the candidate and inflate the gate's test score. Preprocessing stores each test
    photo's difference hash; the retraining rejects pending near-duplicates of them."""
    from multitag.config import RetrainParams
    from multitag.feedback.queue import FeedbackQueue
    from multitag.feedback.retraining import reject_near_duplicates

    root = tmp_path / "dataset"
    dataset = {f"img_{i:04d}": labels_of(i) for i in range(40)}
    for seed, image_id in enumerate(dataset):
        write_bytes(root / f"{image_id}.png", encode(blob_photo(seed), "PNG"))
    write_csv(root, [csv_row(f"{i}.png", labels) for i, labels in dataset.items()], CLASSES)
    validated = Validated(tmp_path, dataset, *validate_into(root, tmp_path / "validated"))
    frozen = tmp_path / "frozen_test.json"
    validated.preprocess(tmp_path / "processed", frozen)
    splits = processed_splits(tmp_path / "processed")
    fingerprints = frozen_fingerprints(frozen)
    assert sorted(fingerprints.values()) == sorted(splits["test"]["sha256"]), "every test photo has its hash stored"

    def seed_of(row) -> int:
        return list(dataset).index(row["image_id"])

    test_row, train_row = splits["test"].iloc[0], splits["train"].iloc[0]
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    copy_of_test = queue.add(encode(blob_photo(seed_of(test_row), side=80), "JPEG", quality=80), ["cat"]).id
    copy_of_train = queue.add(encode(blob_photo(seed_of(train_row), side=80), "JPEG", quality=80), ["cat"]).id
    flat = queue.add(encode(solid("a blank scan", (64, 64)), "PNG"), ["cat"]).id
    exact = queue.add((root / f"{test_row['image_id']}.png").read_bytes(), ["cat"]).id  # the exact rule's (reject_leaked)

    assert reject_near_duplicates(queue, fingerprints, RetrainParams().near_duplicate_bits) == [copy_of_test]
    assert {i.id for i in queue.list_items("pending")} == {copy_of_train, flat, exact}
    assert queue.list_items("rejected")[0].reason.startswith("leakage")
