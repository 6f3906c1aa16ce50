"""Dataset readers: each turns one on-disk layout into manifest records and a class list.

`read_source` picks the reader from `data.source`; a wrong path names the path and the layout
that reader looked for, so the user knows what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from multitag.config import DataParams
from multitag.data.manifest import SourceData, apply_class_subset
from multitag.data.sources.layout_errors import DatasetLayoutError, require

__all__ = ["DatasetLayoutError", "read_source", "require"]


def _readers() -> dict[str, Callable[[Path, DataParams], SourceData]]:
    from multitag.data.sources import coco, csv_folder, voc

    return {
        "voc": voc.read,
        "coco": coco.read_instances_json,
        "yolo": coco.read_yolo,
        "csv": csv_folder.read,
        "synthetic": csv_folder.read_synthetic,
    }


def read_source(params: DataParams) -> SourceData:
    """Read the configured dataset and apply the class subset, if any."""
    data = _readers()[params.source](Path(params.path), params)
    return apply_class_subset(data, params.classes, params.drop_unlabeled)
