"""What the nightly retraining needs besides the ordinary stages: feedback as training data,
the champion as a warm start, and a run-specific parameter file.

Feedback images only ever go to train or validation: the split is fixed in the export's CSV,
and an image whose content is in the frozen test split is rejected before it is claimed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from multitag.config import Params
from multitag.data.manifest import FEEDBACK_SOURCE, Record
from multitag.errors import MissingInputError
from multitag.feedback.queue import FeedbackItem, FeedbackQueue

VAL_PERCENT = 15


def open_queue(params: Params, root: Path = Path(".")) -> FeedbackQueue:
    return FeedbackQueue(root / params.feedback.db_path, root / params.feedback.images_dir, params.feedback.lease_seconds)


def feedback_split(sha: str) -> str:
    """A stable train/val choice from the content hash: the same image always lands the same way."""
    return "val" if int(sha[:8], 16) % 100 < VAL_PERCENT else "train"


def export_feedback(queue: FeedbackQueue, claimed: list[FeedbackItem], export_dir: Path) -> Path:
    """Write every consumed item plus this run's claimed ones as a folder + CSV dataset.

    Consumed feedback stays in the training data of every later run; the export is rebuilt
    from the queue each time, so it is always exactly what the queue says was learned from.
    """
    items = queue.list_items("consumed", limit=10**9) + list(claimed)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    (export_dir / "images").mkdir(parents=True)
    rows = ["filename,labels,split"]
    for item in sorted(items, key=lambda i: i.id):
        source = queue.images.path(item.image_sha256)
        target = export_dir / "images" / f"fb{item.id}{source.suffix}"
        shutil.copyfile(source, target)
        rows.append(f"images/{target.name},{'|'.join(item.labels)},{feedback_split(item.image_sha256)}")
    (export_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    return export_dir


def feedback_records(export_dir: Path) -> list[Record]:
    """Records of an exported feedback dataset (none if nothing was exported yet)."""
    from multitag.config import DataParams
    from multitag.data.sources import csv_folder

    if not (export_dir / "labels.csv").exists():
        return []
    records = csv_folder.read(export_dir, DataParams()).records
    for record in records:
        record.source = FEEDBACK_SOURCE
        record.image_id = f"feedback-{record.image_id}"
    return records


def download_champion(model_name: str, dest: Path) -> tuple[Path, str, str]:
    """The champion's Keras file for a warm start: (path, version, architecture)."""
    import mlflow

    from multitag.lifecycle import registry

    champion = registry.alias_version(model_name, registry.CHAMPION)
    if champion is None:
        raise MissingInputError(f"no champion for {model_name!r} yet: run the training pipeline (make demo) before retraining")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{champion.version}", dst_path=str(dest)))
    keras_file = next(local.rglob("*.keras"))
    return keras_file, champion.version, champion.tags.get("architecture", "")
