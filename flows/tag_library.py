"""tag_library: a watched folder tagged on a schedule (issue 23), the flow behind the `tag-library`
deployment. Each run tags, with the champion, the photos that are new or changed since the last
run, and every photo again after a new champion, into the folder's tags file (multitag/tagging.py:
the file is the run's memory); with `xmp`, each photo's XMP sidecar carries its labels. The photos
themselves are never written. It reads the registry only, so it runs beside a retraining.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, get_run_logger

from multitag import tagging
from multitag.config import load_params
from multitag.lifecycle.predictor import Predictor

TAGS_FILE = "multitag-tags.csv"  # in the watched folder unless `out` says otherwise


@flow(name="tag-library", log_prints=True)
def tag_library(
    folder: str | None = None, out: str | None = None, xmp: bool = False, xmp_root: str = "multitag", params_path: str = "params.yaml"
) -> dict:
    """Tag what is new under `folder` with the champion of params.yaml's model; says so and does
    nothing when no folder is set (the deployment ships with none)."""
    logger = get_run_logger()
    if not folder:
        logger.info("no folder to watch: set the deployment's `folder` parameter (and turn its schedule on)")
        return {"status": "no folder"}
    model_uri, name, version = tagging.model_to_tag_with(load_params(params_path).registry.model_name)
    photos = tagging.photos_under([folder])
    target = Path(out) if out else Path(folder) / TAGS_FILE
    predictor = Predictor.from_uri(model_uri)
    summary = tagging.tag_library(predictor, name, version, photos, target, xmp_root=xmp_root if xmp else None)
    logger.info(
        "%d photo(s) under %s: tagged %d, unchanged %d, failed %d, with %s v%s; tags in %s",
        len(photos),
        folder,
        summary.tagged,
        summary.skipped,
        len(summary.failed),
        name,
        version,
        target,
    )
    return {
        "status": "tagged",
        "model_version": version,
        "tagged": summary.tagged,
        "skipped": summary.skipped,
        "failed": [f"{row.path}: {row.error}" for row in summary.failed],
        "sidecars": summary.sidecars,
        "out": str(target),
    }


if __name__ == "__main__":  # python -m flows.tag_library FOLDER [OUT]
    tag_library(*sys.argv[1:3])
