"""Validation stage: inspect every image, check the manifest with a Great Expectations suite
(expectations.py), quarantine bad items with one reason each, and write a human-readable report.

The stage fails only when the quarantined fraction exceeds `validate.max_invalid_fraction`;
below that, bad items are set aside (never silently dropped) and the rest flows on. A failed run
still writes its report and quarantine (not the manifest), so `multitag data describe` shows what
was wrong, and both say where each bad item came from: the dataset or the feedback export.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from multitag.config import ValidateParams
from multitag.data import manifest
from multitag.data.expectations import run_suite
from multitag.data.images import ImageError, inspect
from multitag.data.manifest import FEEDBACK_SOURCE, Record, SourceData
from multitag.data.parallel import map_with_progress
from multitag.errors import MultitagError, Problem
from multitag.reports import markdown_table, write_json

SUPERSEDED = "superseded_by_feedback"  # not an error: excluded from the invalid fraction
QUARANTINE_COLUMNS = ["image_id", "path", "split", "source", "labels", "reason", "detail"]


@dataclass
class ValidationResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    classes: list[str]
    report: dict


class ValidationFailed(MultitagError, RuntimeError):
    """Too much of the dataset is bad to train on; the message summarises why, `result` holds the
    report and quarantine (write_failure writes them for `multitag data describe`)."""

    def __init__(self, message: str, result: ValidationResult | None = None):
        super().__init__(message)
        self.result = result


def inspect_path(path: str, max_pixels: int, min_side: int) -> tuple[str, int, int, Problem | None]:
    """(sha256, width, height, problem) for one file; the problem is None when it is fine."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "", 0, 0, Problem("missing_file", f"{path} does not exist")
    except OSError as err:
        return "", 0, 0, Problem("unreadable_file", str(err))
    try:
        info = inspect(data, max_pixels, min_side)
    except ImageError as err:
        return "", 0, 0, err.problem
    return info.sha256, info.width, info.height, None


def validate(data: SourceData, params: ValidateParams, workers: int = 1) -> ValidationResult:
    """Check every record; return the clean manifest, the quarantine table and a report."""
    inspect_one = partial(inspect_path, max_pixels=params.max_pixels, min_side=params.min_side)
    inspected = map_with_progress(inspect_one, [r.path for r in data.records], workers, "Validating images")
    reasons: dict[int, Problem] = {}
    for index, (record, (sha, width, height, problem)) in enumerate(zip(data.records, inspected)):
        record.sha256, record.width, record.height = sha, width, height
        if record.problems:
            reasons[index] = Problem.parse(record.problems[0])
        elif problem:
            reasons[index] = problem
    frame = manifest.to_frame(data.records, data.classes)
    suite_results = run_suite(frame, data.classes, params, reasons)
    _flag_duplicates(data.records, reasons)
    clean, quarantine = _split_off_quarantine(frame, reasons)
    report = build_report(clean, quarantine, data.classes, suite_results)
    result = ValidationResult(clean, quarantine, data.classes, report)
    if report["invalid_fraction"] > params.max_invalid_fraction:
        report["failure"] = _failure_summary(report, params.max_invalid_fraction)
        raise ValidationFailed(report["failure"], result)
    return result


def _flag_duplicates(records: list[Record], reasons: dict[int, Problem]) -> None:
    """Keep one copy of each id and of each content hash, in this order of preference:
    the test copy (test content never trains), then a user's feedback, the newest first (a
    correction replaces the source's labels and any older correction; feedback rows come in
    arrival order, as the export writes them), then the first seen."""

    def preference(i: int) -> tuple[bool, bool, int]:
        is_feedback = records[i].source == FEEDBACK_SOURCE
        return records[i].split != "test", not is_feedback, -i if is_feedback else i

    order = sorted(range(len(records)), key=preference)
    seen_ids: dict[str, int] = {}
    seen_hashes: dict[str, int] = {}
    for index in order:
        if index in reasons:
            continue
        record = records[index]
        if record.image_id in seen_ids:
            reasons[index] = Problem("duplicate_id", f"id {record.image_id} already used by {records[seen_ids[record.image_id]].path}")
            continue
        seen_ids[record.image_id] = index
        first = seen_hashes.setdefault(record.sha256, index)
        if first != index:
            reasons[index] = _duplicate_reason(records[first], record)


def _duplicate_reason(kept: Record, dropped: Record) -> Problem:
    if kept.source == FEEDBACK_SOURCE and kept.split != "test":
        return Problem(SUPERSEDED, f"labels corrected by user feedback {kept.image_id}")
    code = "duplicate_content_across_splits" if kept.split != dropped.split else "duplicate_content"
    return Problem(code, f"same bytes as {kept.image_id} ({kept.split or 'unsplit'} split)")


def _split_off_quarantine(frame: pd.DataFrame, reasons: dict[int, Problem]) -> tuple[pd.DataFrame, pd.DataFrame]:
    bad = sorted(reasons)
    quarantine = frame.iloc[bad][["image_id", "path", "split", "source", "labels"]].copy()
    quarantine["reason"] = [reasons[i].reason for i in bad]
    quarantine["detail"] = [reasons[i].detail for i in bad]
    clean = frame.drop(frame.index[bad]).reset_index(drop=True)
    return clean, quarantine.reset_index(drop=True)[QUARANTINE_COLUMNS]


def origin(source: str) -> str:
    """Where a manifest row came from, in words: the feedback export (users' corrections) or the dataset (its reader's name)."""
    if source == FEEDBACK_SOURCE:
        return "feedback export"
    return f"dataset ({source})" if source else "dataset"


def build_report(clean: pd.DataFrame, quarantine: pd.DataFrame, classes: list[str], suite: list[dict]) -> dict:
    """Counts a person reads before training: per-class images per split, and why items were set
    aside, in all and per origin (dataset or feedback export)."""
    total = len(clean) + len(quarantine)
    invalid = int((quarantine["reason"] != SUPERSEDED).sum())
    by_origin: dict[str, Counter] = {}
    for source, reason in zip(quarantine["source"], quarantine["reason"]):
        if reason != SUPERSEDED:
            by_origin.setdefault(origin(source), Counter())[reason] += 1
    per_class = {
        name: {
            split or "unsplit": int(group["labels"].map(lambda xs, name=name: name in xs).sum()) for split, group in clean.groupby("split")
        }
        for name in classes
    }
    return {
        "images_total": total,
        "images_valid": len(clean),
        "images_quarantined": len(quarantine),
        "invalid_fraction": (invalid / total) if total else 0.0,
        "images_per_split": {k or "unsplit": int(v) for k, v in clean["split"].value_counts().items()},
        "quarantine_reasons": dict(Counter(quarantine["reason"])),
        "invalid_by_origin": {name: dict(reasons) for name, reasons in sorted(by_origin.items())},
        "per_class_counts": per_class,
        "classes_without_images": [name for name, counts in per_class.items() if sum(counts.values()) == 0],
        "expectations": suite,
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _failure_summary(report: dict, limit: float) -> str:
    origins = "; ".join(f"{name}: {sum(reasons.values())} ({_counts(reasons)})" for name, reasons in report["invalid_by_origin"].items())
    return (
        f"{report['images_quarantined']} of {report['images_total']} images ({report['invalid_fraction']:.1%}) are invalid, "
        f"above validate.max_invalid_fraction={limit:.1%}. Reasons: {_counts(report['quarantine_reasons'])}. "
        f"By origin: {origins}. "
        "See the quarantine table (multitag data describe), fix the data or raise the limit in params.yaml."
    )


def write_failure(result: ValidationResult, out_dir: Path) -> None:
    """A failed run's report and quarantine in out_dir, for `multitag data describe`; the manifest
    and class list of an earlier run are removed, so no later stage trains on data this run rejected."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.parquet", "classes.json"):
        (out_dir / stale).unlink(missing_ok=True)
    result.quarantine.to_parquet(out_dir / "quarantine.parquet", index=False)
    write_json(out_dir / "report.json", result.report)
    (out_dir / "report.md").write_text(report_markdown(result.report, result.quarantine))


def write_outputs(result: ValidationResult, out_dir: Path) -> dict[str, Path]:
    """manifest.parquet, quarantine.parquet, classes.json, report.json and report.md in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "manifest": manifest.write(result.manifest, out_dir / "manifest.parquet"),
        "classes": manifest.write_classes(result.classes, out_dir / "classes.json"),
        "report_json": out_dir / "report.json",
        "report_md": out_dir / "report.md",
        "quarantine": out_dir / "quarantine.parquet",
    }
    result.quarantine.to_parquet(paths["quarantine"], index=False)
    write_json(paths["report_json"], result.report)
    paths["report_md"].write_text(report_markdown(result.report, result.quarantine))
    return paths


def report_markdown(report: dict, quarantine: pd.DataFrame) -> str:
    splits = sorted({s for counts in report["per_class_counts"].values() for s in counts})
    lines = [
        "# Data validation report",
        "",
        *([f"**Validation failed**: {report['failure']}", ""] if report.get("failure") else []),
        f"- images: {report['images_total']}, valid: {report['images_valid']}, quarantined: {report['images_quarantined']} "
        f"({report['invalid_fraction']:.1%})",
        f"- images per split: {report['images_per_split']}",
        "",
        "## Images per class and split",
        "",
        *markdown_table(["class", *splits], ([name, *(c.get(s, 0) for s in splits)] for name, c in report["per_class_counts"].items())),
        "",
        "## Quarantine",
        "",
        *markdown_table(
            ["image_id", "from", "reason", "detail"], ((r.image_id, origin(r.source), r.reason, r.detail) for r in quarantine.itertuples())
        ),
        "",
        "## Expectations",
        "",
        *markdown_table(
            ["expectation", "reason", "success", "failing rows"],
            ((e["expectation"], e["reason"], e["success"], e["failing_rows"]) for e in report["expectations"]),
        ),
    ]
    return "\n".join(lines) + "\n"
