"""Tagging a photo library (issue 23): `multitag tag` over folders, files and globs into CSV or
JSON Lines, resumable and incremental (a re-run skips photos whose content and model version are
unchanged, a new champion re-tags them), unreadable photos listed with their reason, never fatal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from corpus import encode, solid
from typer.testing import CliRunner

from multitag.lifecycle.predictor import Predictor
from multitag.tagging import photos_under, read_rows, tag_library


def library(root: Path, count: int = 6) -> Path:
    """Photos in nested folders, plus a corrupt one and a file that is no photo."""
    for i in range(count):
        folder = root / ("2025" if i % 2 else "2026/summer")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo{i}.{'jpg' if i % 3 else 'png'}").write_bytes(encode(solid(f"photo {i}", (40, 30)), "JPEG" if i % 3 else "PNG"))
    (root / "2025" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not a photo")
    return root


def test_a_folder_is_tagged_into_csv_and_a_broken_photo_is_listed_not_fatal(registry_env, tmp_path, monkeypatch):
    photos = library(tmp_path / "library")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    (tmp_path / "params.yaml").write_text(f"registry:\n  model_name: {registry_env.name}\n")
    result = CliRunner().invoke(__import__("multitag.cli", fromlist=["app"]).app, ["tag", str(photos), "--out", str(tmp_path / "tags.csv")])
    assert result.exit_code == 0, result.output
    assert "tagged 6, unchanged and skipped 0, failed 1" in result.output and "broken.jpg" in result.output
    with (tmp_path / "tags.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 and {r["version"] for r in rows} == {registry_env.version}
    broken = next(r for r in rows if r["path"].endswith("broken.jpg"))
    assert broken["error"] and not broken["labels"] and not broken["score_cat"]
    good = [r for r in rows if not r["error"]]
    assert all(0 <= float(r[f"score_{name}"]) <= 1 for r in good for name in registry_env.classes)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows), "one row per photo, sorted by path"


def test_a_second_run_skips_unchanged_photos_and_a_new_champion_retags_them(registry_env, fresh_model_name, tmp_path):
    photos = photos_under([str(library(tmp_path / "library"))])
    out = tmp_path / "tags.jsonl"
    predictor = Predictor.from_uri(registry_env.model_uri)
    first = tag_library(predictor, fresh_model_name, "1", photos, out)
    assert (first.tagged, first.skipped, len(first.failed)) == (6, 0, 1)
    again = tag_library(predictor, fresh_model_name, "1", photos, out)
    assert (again.tagged, again.skipped, len(again.failed)) == (0, 6, 1), "unchanged photos are skipped; the broken one is tried again"
    next(p for p in photos if p.name != "broken.jpg").write_bytes(encode(solid("edited", (40, 30)), "PNG"))  # an edited photo
    edited = tag_library(predictor, fresh_model_name, "1", photos, out)
    assert (edited.tagged, edited.skipped) == (1, 5)
    retagged = tag_library(predictor, fresh_model_name, "2", photos, out)  # a new champion
    assert (retagged.tagged, retagged.skipped) == (6, 0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 7 and {line["version"] for line in lines} == {"2"}, "one row per photo, the newest"


def test_a_killed_run_resumes_where_it_stopped(registry_env, tmp_path):
    """Rows are appended as batches finish: the rows of a run killed half-way are kept and skipped."""
    photos = photos_under([str(library(tmp_path / "library", count=10))])
    out = tmp_path / "tags.csv"
    predictor = Predictor.from_uri(registry_env.model_uri)
    tag_library(predictor, "m", "1", photos[:5], out, batch=2)  # what a killed run left
    resumed = tag_library(predictor, "m", "1", photos, out, batch=2)
    assert resumed.skipped == 5 - sum(p.name == "broken.jpg" for p in photos[:5]) and len(read_rows(out)) == len(photos)


def test_paths_can_be_files_folders_and_globs_and_a_missing_one_is_an_error(tmp_path):
    from multitag.errors import UsageError

    root = library(tmp_path / "library")
    by_glob = photos_under([str(root / "**" / "*.png")])
    assert by_glob and all(p.suffix == ".png" for p in by_glob)
    one = next(iter(by_glob))
    assert photos_under([str(one), str(root / "2025")]) == sorted({one, *photos_under([str(root / "2025")])})
    with pytest.raises(UsageError, match="no such file or folder"):
        photos_under([str(tmp_path / "nowhere")])
