"""Tag a photo library (`multitag tag`): every photo under some paths, scored by one registered
version, written to a CSV or JSON Lines file a photo manager or a script can read.

The output file is also the run's memory. Each row names the photo's path, its content hash and
the model version that tagged it, so a run skips the photos whose content and version are what
the file already says (a re-run after an interruption, or a library that grew) and tags the rest,
including every photo again after a new champion. Rows are appended as batches finish (a killed
run keeps its work) and the file is rewritten at the end with one row per photo, sorted by path.
An unreadable photo gets a row with its reason and no labels; it never stops the run, and the
next run tries it again.

Photos are read and decoded by a thread pool (Pillow decodes outside the GIL) while the model
scores the previous batch, through the runtime the server uses (the TFLite export where the gate
logged one).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multitag.data.images import ImageError
from multitag.data.parallel import chunks, progress_bar
from multitag.errors import UsageError
from multitag.lifecycle.predictor import Predictor
from multitag.xmp import write_keywords

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
BATCH = 32
FIXED_COLUMNS = ("path", "sha256", "model", "version", "labels", "error")


@dataclass(frozen=True)
class Tagged:
    """One photo's row: its labels and every class's score, or why it could not be read."""

    path: str
    sha256: str
    model: str
    version: str
    labels: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class Summary:
    tagged: int = 0
    skipped: int = 0
    failed: list[Tagged] = field(default_factory=list)
    per_class: Counter = field(default_factory=Counter)
    sidecars: int = 0  # XMP sidecars written or updated


def photos_under(paths: Iterable[str]) -> list[Path]:
    """Every photo a path names: a file, a folder (recursively, by suffix) or a glob pattern; sorted, once each."""
    found: dict[str, Path] = {}
    for raw in paths:
        candidates = [Path(p) for p in glob.glob(raw, recursive=True)] if glob.has_magic(raw) else [Path(raw)]
        if not candidates or not all(c.exists() for c in candidates):
            raise UsageError(f"{raw}: no such file or folder")
        for candidate in candidates:
            inside = sorted(p for p in candidate.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES) if candidate.is_dir() else [candidate]
            found.update((str(p.resolve()), p.resolve()) for p in inside if p.is_file())
    return [found[key] for key in sorted(found)]


def read_rows(out: Path) -> dict[str, Tagged]:
    """The rows an earlier run wrote, the last one per path (rows are appended as batches finish)."""
    if not out.exists():
        return {}
    if out.suffix == ".csv":
        with out.open(newline="") as handle:
            rows = [_from_csv(row) for row in csv.DictReader(handle)]
    else:
        rows = [_from_json(json.loads(line)) for line in out.read_text().splitlines() if line.strip()]
    return {row.path: row for row in rows}


def model_to_tag_with(model_name: str, model_uri: str | None = None) -> tuple[str, str, str]:
    """(URI, name, version) to tag with: `model_uri` as given (version "-"), else the champion of
    `model_name`, pinned to its version so a promotion during the run cannot mix two models."""
    from multitag.lifecycle import registry

    if model_uri is not None:
        return model_uri, model_uri, "-"
    champion = registry.alias_version(model_name, registry.CHAMPION)
    if champion is None:
        raise UsageError(f"no champion of {model_name} to tag with: run `make demo` or `multitag pipeline` first, or pass --model")
    return f"models:/{model_name}/{champion.version}", model_name, champion.version


def tag_library(
    predictor: Predictor,
    model: str,
    version: str,
    photos: Sequence[Path],
    out: Path,
    workers: int = 4,
    batch: int = BATCH,
    xmp_root: str | None = None,
) -> Summary:
    """Tag the photos the output file does not already hold for this version and content; returns
    the counts. With `xmp_root`, every tagged photo's XMP sidecar then holds its labels (xmp.py)."""
    if out.suffix not in (".csv", ".jsonl", ".json"):
        raise UsageError(f"{out}: write tags to a .csv or a .jsonl file")
    done = read_rows(out)

    def unchanged(photo: _Read) -> bool:
        before = done.get(str(photo.path))
        return (
            not photo.error
            and before is not None
            and not before.error
            and (before.sha256, before.model, before.version) == (photo.sha256, model, version)
        )

    summary = Summary()
    with ThreadPoolExecutor(workers) as pool, progress_bar() as progress, _Appender(out, predictor.classes) as appender:
        task = progress.add_task(f"Tagging with {model} v{version}", total=len(photos))
        for group in chunks(list(photos), batch):
            read = list(pool.map(_read, group))
            todo = [photo for photo in read if not unchanged(photo)]
            summary.skipped += len(read) - len(todo)
            rows = _score(pool, predictor, model, version, todo) if todo else []
            appender.write(rows)
            for row in rows:
                done[row.path] = row
                summary.failed += [row] if row.error else []
                summary.tagged += not row.error
                summary.per_class.update(row.labels)
            progress.advance(task, len(group))
    write_rows(out, list(done.values()), predictor.classes)
    if xmp_root is not None:  # every photo of this run, skipped ones too: an earlier run may have written no sidecars
        wanted = {str(path) for path in photos}
        summary.sidecars = sum(
            write_keywords(Path(row.path), row.labels, xmp_root) for row in done.values() if row.path in wanted and not row.error
        )
    return summary


@dataclass(frozen=True)
class _Read:
    path: Path
    data: bytes
    sha256: str
    error: str = ""


def _read(path: Path) -> _Read:
    try:
        data = path.read_bytes()
    except OSError as err:
        return _Read(path, b"", "", f"unreadable: {err.strerror or err}")
    return _Read(path, data, hashlib.sha256(data).hexdigest())


def _score(pool: ThreadPoolExecutor, predictor: Predictor, model: str, version: str, photos: list[_Read]) -> list[Tagged]:
    """Decode the photos in the pool, score the readable ones in one model call; a row each."""

    def decode(photo: _Read) -> np.ndarray | str:
        if photo.error:
            return photo.error
        try:
            return predictor.decode(photo.data)
        except ImageError as err:
            return f"{err.problem.reason}: {err.problem.detail}"

    decoded = list(pool.map(decode, photos))
    readable = [i for i, pixels in enumerate(decoded) if not isinstance(pixels, str)]
    scores = iter(predictor.predict_arrays(np.stack([decoded[i] for i in readable])) if readable else [])
    rows = []
    for photo, pixels in zip(photos, decoded):
        if isinstance(pixels, str):
            rows.append(Tagged(str(photo.path), photo.sha256, model, version, error=pixels))
        else:
            answer = predictor.labelled(next(scores), photo.sha256)
            rows.append(Tagged(str(photo.path), photo.sha256, model, version, tuple(answer.labels), dict(answer.probabilities)))
    return rows


class _Appender:
    """Appends rows as batches finish, so a killed run keeps what it tagged."""

    def __init__(self, out: Path, classes: list[str]):
        self.out, self.classes = out, classes

    def __enter__(self) -> _Appender:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.out.exists() or self.out.stat().st_size == 0
        self.handle = self.out.open("a", newline="")
        if self.out.suffix == ".csv":
            self.writer = csv.DictWriter(self.handle, _csv_columns(self.classes), extrasaction="ignore")
            if fresh:
                self.writer.writeheader()
        return self

    def write(self, rows: list[Tagged]) -> None:
        for row in rows:
            if self.out.suffix == ".csv":
                self.writer.writerow(_to_csv(row))
            else:
                self.handle.write(json.dumps(_to_json(row)) + "\n")
        self.handle.flush()

    def __exit__(self, *_) -> None:
        self.handle.close()


def write_rows(out: Path, rows: list[Tagged], classes: list[str]) -> None:
    """The whole file, one row per photo sorted by path, replacing the appended one in one rename."""
    temp = out.with_name(f".{out.name}.tmp")
    ordered = sorted(rows, key=lambda row: row.path)
    with temp.open("w", newline="") as handle:
        if out.suffix == ".csv":
            writer = csv.DictWriter(handle, _csv_columns(classes), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(_to_csv(row) for row in ordered)
        else:
            handle.writelines(json.dumps(_to_json(row)) + "\n" for row in ordered)
    os.replace(temp, out)


def _csv_columns(classes: list[str]) -> list[str]:
    return [*FIXED_COLUMNS, *(f"score_{name}" for name in classes)]


def _to_csv(row: Tagged) -> dict[str, str]:
    fixed = {"path": row.path, "sha256": row.sha256, "model": row.model, "version": row.version, "labels": "|".join(row.labels)}
    return {**fixed, "error": row.error, **{f"score_{name}": f"{score:.4f}" for name, score in row.scores.items()}}


def _from_csv(cells: dict[str, str]) -> Tagged:
    scores = {key.removeprefix("score_"): float(value) for key, value in cells.items() if key.startswith("score_") and value}
    labels = tuple(cells["labels"].split("|")) if cells.get("labels") else ()
    return Tagged(cells["path"], cells["sha256"], cells["model"], cells["version"], labels, scores, cells.get("error", ""))


def _to_json(row: Tagged) -> dict:
    return {"path": row.path, "sha256": row.sha256, "model": row.model, "version": row.version, "labels": list(row.labels),
            "scores": {name: round(score, 4) for name, score in row.scores.items()}, "error": row.error}  # fmt: skip


def _from_json(cells: dict) -> Tagged:
    return Tagged(cells["path"], cells["sha256"], cells["model"], cells["version"], tuple(cells["labels"]), cells["scores"], cells["error"])
