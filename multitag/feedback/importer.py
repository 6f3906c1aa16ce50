"""Bulk corrections: a folder of images plus the CSV layout of the csv source (`filename,labels`,
read by the same row parser), queued row by row with every row accounted for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from multitag.config import ValidateParams
from multitag.data.sources.csv_folder import read_rows
from multitag.errors import MissingInputError
from multitag.feedback.queue import AddResult, FeedbackQueue, OpenInAnotherTask
from multitag.feedback.store import image_extension

IMPORT_CSV_LAYOUT = (
    "a header 'filename,labels', then one row per image, labels separated by '|' "
    "(an optional fourth column, absent, makes a row partial: the classes confirmed absent, the others unknown)"
)


@dataclass(frozen=True)
class ImportProblem:
    line: int
    filename: str
    reason: str


@dataclass
class ImportReport:
    added: list[AddResult] = field(default_factory=list)
    merged: list[AddResult] = field(default_factory=list)
    errors: list[ImportProblem] = field(default_factory=list)


def import_dir(
    queue: FeedbackQueue, directory: Path, labels_csv: Path | None = None, min_labels: int = ValidateParams().min_labels
) -> ImportReport:
    """Queue a folder of images listed in a CSV (`filename,labels`, labels separated by '|') for the queue's task.

    The CSV defaults to `directory/labels.csv`. Every row ends up in the report: added, merged
    into an open item, or an error with its line number (missing or unreadable file, content
    that is no known image format, a row that is not UTF-8 or has no labels column, fewer than
    `min_labels` labels: validate.min_labels, as the API checks them).
    """
    directory = Path(directory)
    csv_path = Path(labels_csv) if labels_csv is not None else directory / "labels.csv"
    if not csv_path.is_file():
        raise MissingInputError(f"{csv_path} not found: an import needs {IMPORT_CSV_LAYOUT}")
    report = ImportReport()
    for row in read_rows(csv_path):
        if row.problem:
            report.errors.append(ImportProblem(row.line, row.filename, row.problem))
            continue
        if len(row.labels) < min_labels:
            report.errors.append(
                ImportProblem(row.line, row.filename, f"no_labels: {len(row.labels)} labels, at least {min_labels} required")
            )
            continue
        try:
            image_bytes = read_image(directory, row.filename)
        except ValueError as err:
            report.errors.append(ImportProblem(row.line, row.filename, str(err)))
            continue
        try:
            result = queue.add(
                image_bytes, row.labels, note=f"imported from {csv_path.name}:{row.line}", origin="import", absent=row.absent
            )
        except OpenInAnotherTask as err:
            report.errors.append(ImportProblem(row.line, row.filename, f"open_in_another_task: {err}"))
            continue
        (report.merged if result.merged else report.added).append(result)
    return report


def read_image(directory: Path, filename: str) -> bytes:
    """The bytes of `directory/filename`; ValueError naming the reason when it cannot be imported."""
    path = directory / filename
    if not path.resolve().is_relative_to(directory.resolve()):
        raise ValueError("outside_directory: the path leaves the import directory")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"missing_file: {path} does not exist") from None
    except OSError as err:
        raise ValueError(f"unreadable_file: {err.strerror or err}") from None
    if image_extension(data) == "bin":
        raise ValueError("not_an_image: the content is no jpg, png, webp, bmp or gif")
    return data
