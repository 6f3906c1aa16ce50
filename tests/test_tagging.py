"""Tagging a photo library (issue 23): `multitag tag` over folders, files and globs into CSV or
JSON Lines, resumable and incremental (a re-run skips photos whose content and model version are
unchanged, a new champion re-tags them), unreadable photos listed with their reason, never fatal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from corpus import encode, solid
from engines import flows_reporting_to
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


def exiftool(*arguments: str) -> str:
    """Debian's exiftool, the reader photo managers' metadata is checked against (skip without it)."""
    import shutil
    import subprocess

    if shutil.which("exiftool") is None:
        pytest.skip("exiftool missing: run `bash scripts/install_test_deps.sh` as root (Debian's libimage-exiftool-perl)")
    return subprocess.run(["exiftool", *arguments], capture_output=True, text=True, check=True).stdout


def read_xmp(*sidecars: str) -> list[dict]:
    """Every property exiftool reads from the sidecars, by group and name (XMP-dc:Subject, ...)."""
    return json.loads(exiftool("-j", "-G1", *sidecars))


def as_list(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_xmp_sidecars_carry_the_labels_and_keep_what_a_person_wrote(registry_env, tmp_path):
    """A sidecar a photo manager made (a creator, a rating, a keyword of the person's own) keeps all
    of it; the model's keywords are added, and replaced, not piled up, when the labels change."""
    from multitag.xmp import sidecar_path, write_keywords

    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(encode(solid("beach", (40, 30)), "JPEG"))
    exiftool("-o", str(sidecar_path(photo)), "-XMP-dc:Creator=Ann", "-XMP-xmp:Rating=4", "-XMP-dc:Subject=holiday", str(photo))
    assert write_keywords(photo, ["cat", "dog"])
    (read,) = read_xmp(str(sidecar_path(photo)))
    assert sorted(as_list(read["XMP-dc:Subject"])) == ["cat", "dog", "holiday"]
    assert sorted(as_list(read["XMP-lr:HierarchicalSubject"])) == ["multitag|cat", "multitag|dog"]
    assert read["XMP-dc:Creator"] == "Ann" and read["XMP-xmp:Rating"] == 4, "the person's fields stay"
    assert write_keywords(photo, ["person"]) and not write_keywords(photo, ["person"]), "an unchanged sidecar is not rewritten"
    (read,) = read_xmp(str(sidecar_path(photo)))
    assert sorted(as_list(read["XMP-dc:Subject"])) == ["holiday", "person"], "the model's old keywords go, the person's stay"
    assert as_list(read["XMP-lr:HierarchicalSubject"]) == ["multitag|person"]
    assert photo.read_bytes() == encode(solid("beach", (40, 30)), "JPEG"), "the photo itself is never touched"


def test_tag_with_xmp_writes_a_sidecar_per_tagged_photo(registry_env, tmp_path):
    photos = photos_under([str(library(tmp_path / "library"))])
    predictor = Predictor.from_uri(registry_env.model_uri)
    summary = tag_library(predictor, "m", "1", photos, tmp_path / "tags.csv", xmp_root="multitag")
    assert summary.sidecars == 6 and not (tmp_path / "library" / "2025" / "broken.xmp").exists()
    rows = read_rows(tmp_path / "tags.csv")
    read = {Path(r["SourceFile"]).stem: r for r in read_xmp(*(str(p.with_suffix(".xmp")) for p in photos if p.name != "broken.jpg"))}
    for path, row in rows.items():
        if not row.error:
            found = as_list(read[Path(path).stem].get("XMP-lr:HierarchicalSubject", []))
            assert sorted(found) == sorted(f"multitag|{label}" for label in row.labels)


def test_the_watched_folder_flow_tags_what_is_new_and_ships_doing_nothing(registry_env, tmp_path, prefect_api):
    """flows/tag_library.py, the `tag-library` deployment's flow, run in-process under Prefect."""
    from flows.tag_library import TAGS_FILE
    from flows.tag_library import tag_library as watched

    photos = library(tmp_path / "library")
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  model_name: {registry_env.name}\n")
    with flows_reporting_to(prefect_api):
        assert watched(params_path=str(params)) == {"status": "no folder"}
        first = watched(folder=str(photos), params_path=str(params))
        assert (first["tagged"], first["skipped"], len(first["failed"])) == (6, 0, 1) and first["out"] == str(photos / TAGS_FILE)
        (photos / "2026" / "new.png").write_bytes(encode(solid("a new photo", (40, 30)), "PNG"))
        second = watched(folder=str(photos), params_path=str(params))
    assert (second["tagged"], second["skipped"]) == (1, 6), "only the new photo (and the broken one, tried again) is scored"
    assert len(read_rows(photos / TAGS_FILE)) == 8
