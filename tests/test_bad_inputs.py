"""Data tests: a corpus of malformed inputs goes through the real validate and preprocess stages.

Each bad input must be quarantined with exactly its reason code, each odd-but-valid format must
pass and decode to the right pixels, no record may disappear, and a dataset that is too broken
must stop the stage with a summary a person can act on.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import (
    CSV_CLASSES,
    Case,
    build_csv_corpus,
    build_voc_corpus,
    csv_row,
    encode,
    exif_rotated_jpeg,
    noise,
    png16_halves,
    solid,
    write_bytes,
    write_csv,
)

from multitag.config import Params
from multitag.data import images, manifest
from multitag.data.sources import read_source
from multitag.data.validation import ValidationFailed
from multitag.layout import Layout
from multitag.stages import preprocess_stage, validate_stage

IMAGE_SIZE = 24
BUILDERS = {"voc": build_voc_corpus, "csv": build_csv_corpus}


@dataclass
class Run:
    """One corpus after the validate and preprocess stages, read back from disk."""

    cases: list[Case]
    reader_ids: list[str]
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict
    layout: Layout

    def expected_reasons(self) -> dict[str, str]:
        return {c.path: c.expected for c in self.cases if c.expected}

    def valid_paths(self) -> set[str]:
        return {c.path for c in self.cases if c.expected is None}

    def pixels(self, image_id: str) -> np.ndarray:
        """The preprocessed (H, W, 3) array of one image, found through the processed manifest."""
        processed = manifest.read(self.layout.processed / "manifest.parquet")
        split = processed.loc[processed["image_id"] == image_id, "split"].item()
        rows = processed[processed["split"] == split].reset_index(drop=True)
        row = rows.index[rows["image_id"] == image_id].item()
        return np.load(self.layout.processed / f"{split}_x.npy")[row]


def corpus_params(source: str, path: Path, **validate) -> Params:
    return Params.model_validate(
        {
            "data": {"source": source, "path": str(path)},
            "validate": {"max_invalid_fraction": 1.0, **validate},
            "preprocess": {"image_size": IMAGE_SIZE, "workers": 2},
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Build both corpora once and run validate + preprocess on each (the slow part of the module)."""
    result = {}
    for source, build in BUILDERS.items():
        root = tmp_path_factory.mktemp(f"{source}_corpus")
        cases = build(root / "dataset")
        params = corpus_params(source, root / "dataset")
        layout = Layout(root=root / "work")
        reader_ids = [r.image_id for r in read_source(params.data).records]
        paths = validate_stage(params, layout)
        preprocess_stage(params, layout)
        result[source] = Run(
            cases=cases,
            reader_ids=reader_ids,
            manifest=manifest.read(paths["manifest"]),
            quarantine=pd.read_parquet(paths["quarantine"]),
            report=json.loads(paths["report_json"].read_text()),
            layout=layout,
        )
    return result


def test_corpus_covers_at_least_twenty_malformed_cases(runs):
    malformed = [c for run in runs.values() for c in run.cases if c.expected]
    assert len(malformed) >= 20
    assert len({c.expected for c in malformed}) >= 14, "the corpus should exercise most reason codes"


@pytest.mark.parametrize("source", BUILDERS)
def test_each_bad_input_is_quarantined_with_exactly_its_reason(runs, source):
    run = runs[source]
    assert run.quarantine["path"].is_unique
    assert dict(zip(run.quarantine["path"], run.quarantine["reason"])) == run.expected_reasons()


@pytest.mark.parametrize("source", ["voc", "csv"])
def test_every_quarantined_item_has_a_detail(runs, source):
    quarantine = runs[source].quarantine
    empty = quarantine.loc[quarantine["detail"].str.strip() == "", "reason"].tolist()
    assert not empty, f"quarantine rows without a detail for the user: {empty}"


@pytest.mark.parametrize("source", BUILDERS)
def test_valid_odd_formats_pass_validation(runs, source):
    run = runs[source]
    assert set(run.manifest["path"]) == run.valid_paths()
    assert run.manifest["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert ((run.manifest["width"] >= 8) & (run.manifest["height"] >= 8)).all()


@pytest.mark.parametrize("source", BUILDERS)
def test_no_record_is_lost(runs, source):
    """Every record the reader produced is in the manifest or the quarantine, exactly once."""
    run = runs[source]
    seen = Counter(run.manifest["image_id"]) + Counter(run.quarantine["image_id"])
    assert seen == Counter(run.reader_ids) == Counter(c.image_id for c in run.cases)
    assert run.report["images_total"] == len(run.cases)
    assert run.report["images_quarantined"] == len(run.quarantine)
    assert run.report["quarantine_reasons"] == dict(Counter(c.expected for c in run.cases if c.expected))


def test_test_copy_of_a_duplicate_is_kept_and_the_train_copy_quarantined(runs):
    run = runs["voc"]
    kept = run.manifest.set_index("image_id")
    assert kept.loc["z_dup_test", "split"] == "test"
    detail = run.quarantine.set_index("image_id").loc["a_dup_train", "detail"]
    assert "z_dup_test" in detail and "test" in detail


@pytest.mark.parametrize("source", BUILDERS)
def test_valid_images_preprocess_into_uint8_rgb_arrays(runs, source):
    run = runs[source]
    processed = manifest.read(run.layout.processed / "manifest.parquet")
    assert sorted(processed["image_id"]) == sorted(run.manifest["image_id"])
    classes = manifest.read_classes(run.layout.processed / "classes.json")
    for split in ("train", "val", "test"):
        x = np.load(run.layout.processed / f"{split}_x.npy")
        y = np.load(run.layout.processed / f"{split}_y.npy")
        rows = processed[processed["split"] == split]
        assert x.dtype == np.uint8 and x.shape == (len(rows), IMAGE_SIZE, IMAGE_SIZE, 3)
        assert y.dtype == np.uint8 and y.shape == (len(rows), len(classes))
        np.testing.assert_array_equal(y, manifest.label_matrix(rows["labels"], classes))


def test_16_bit_png_is_scaled_not_clipped(runs):
    data, (dark, bright) = png16_halves()
    decoded = images.decode(data, 32)
    assert abs(int(decoded[:, :12].mean()) - dark) <= 1 and abs(int(decoded[:, 20:].mean()) - bright) <= 1
    pixels = runs["voc"].pixels("png16").astype(int)
    assert np.abs(pixels[:, :8] - dark).max() <= 2, "16-bit values must be scaled to 8 bits"
    assert np.abs(pixels[:, 16:] - bright).max() <= 2, "16-bit values must be scaled, not clipped white"
    tiff = runs["csv"].pixels("deep").astype(int)
    assert np.abs(tiff - round(40000 * 255 / 65535)).max() <= 2


def test_exif_orientation_is_applied(runs):
    """40x20 stored with orientation 6: decoded it is portrait, red over blue."""
    letterboxed = images.decode(exif_rotated_jpeg(), 40, "letterbox").astype(int)
    assert letterboxed[:, :8].max() < 30 and letterboxed[:, -8:].max() < 30, "portrait: padding left and right"
    top, bottom = letterboxed[2:18, 12:28], letterboxed[22:38, 12:28]
    assert (top[..., 0] > 200).all() and (top[..., 2] < 60).all()
    assert (bottom[..., 2] > 200).all() and (bottom[..., 0] < 60).all()
    stretched = runs["voc"].pixels("exif_rotated").astype(int)
    assert (stretched[:8, ..., 0] > 200).all() and (stretched[-8:, ..., 2] > 200).all()


def test_alpha_and_transparency_are_composited_over_white(runs):
    for run, image_id, opaque in [
        (runs["voc"], "rgba_png", None),
        (runs["csv"], "rgba", None),
        (runs["voc"], "gif_transparent", (255, 0, 0)),
    ]:
        pixels = run.pixels(image_id).astype(int)
        assert (pixels[:, :8] >= 250).all(), f"{image_id}: transparent half must be white"
        if opaque:
            assert np.abs(pixels[:, -8:] - opaque).max() <= 2


def test_cmyk_and_greyscale_jpegs_become_rgb(runs):
    cmyk = runs["voc"].pixels("cmyk_jpeg").astype(int)
    assert np.abs(cmyk - (255, 0, 0)).max() <= 12
    grey = runs["voc"].pixels("grey_jpeg")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


# --------------------------------------------------------------------------------------------
# Too much bad data stops the stage
# --------------------------------------------------------------------------------------------


def test_validation_fails_with_a_readable_summary_above_the_limit(tmp_path):
    cases = build_csv_corpus(tmp_path / "dataset")
    bad = [c for c in cases if c.expected]
    params = corpus_params("csv", tmp_path / "dataset", max_invalid_fraction=0.05)
    with pytest.raises(ValidationFailed) as failure:
        validate_stage(params, Layout(root=tmp_path / "work"))
    message = str(failure.value)
    assert f"{len(bad)} of {len(cases)} images ({len(bad) / len(cases):.1%}) are invalid" in message
    assert "validate.max_invalid_fraction=5.0%" in message
    for reason, count in Counter(c.expected for c in bad).items():
        assert f"{reason}: {count}" in message
    assert "fix the data or raise the limit" in message
    assert not (tmp_path / "work" / "data" / "validated" / "manifest.parquet").exists(), "no manifest from a failed stage"


def test_validation_passes_at_exactly_the_limit(tmp_path):
    cases = build_csv_corpus(tmp_path / "dataset")
    fraction = sum(c.expected is not None for c in cases) / len(cases)
    validate_stage(corpus_params("csv", tmp_path / "dataset", max_invalid_fraction=fraction), Layout(root=tmp_path / "work"))
    with pytest.raises(ValidationFailed):
        validate_stage(corpus_params("csv", tmp_path / "dataset", max_invalid_fraction=fraction - 0.01), Layout(root=tmp_path / "work"))


def test_cli_reports_the_failure_and_exits_non_zero(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from multitag.cli import app

    build_csv_corpus(tmp_path / "dataset")
    (tmp_path / "params.yaml").write_text(f"data: {{source: csv, path: {tmp_path / 'dataset'}}}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "validate", "--params", "params.yaml"])
    assert result.exit_code == 1
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "ValidationFailed" in output and "max_invalid_fraction" in output and "bad_csv_row" in output


# --------------------------------------------------------------------------------------------
# Regressions of bugs found while building this corpus
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, data",
    [("header_cut.jpg", noise("JPEG")[:300]), ("header_cut.webp", noise("WEBP")[:40])],
    ids=["jpeg", "webp"],
)
def test_file_cut_inside_its_header_is_quarantined(tmp_path, name, data):
    root = tmp_path / "dataset"
    write_bytes(root / name, data)
    write_bytes(root / "fine.png", encode(solid("fine"), "PNG"))
    write_csv(root, [csv_row(name, ["cat"]), csv_row("fine.png", ["cat"])], CSV_CLASSES)
    validate_stage(corpus_params("csv", root), Layout(root=tmp_path / "work"))
    quarantine = pd.read_parquet(tmp_path / "work" / "data" / "validated" / "quarantine.parquet")
    assert quarantine["reason"].tolist() in (["truncated"], ["not_an_image"])


def test_valid_copy_survives_when_its_twin_is_quarantined_for_another_reason(tmp_path):
    root = tmp_path / "dataset"
    same = encode(solid("twin"), "PNG")
    write_bytes(root / "a_twin.png", same)
    write_bytes(root / "b_twin.png", same)
    write_csv(root, [csv_row("a_twin.png", ["unicorn"], "train"), csv_row("b_twin.png", ["cat"], "train")], CSV_CLASSES)
    paths = validate_stage(corpus_params("csv", root), Layout(root=tmp_path / "work"))
    assert manifest.read(paths["manifest"])["image_id"].tolist() == ["b_twin"]
