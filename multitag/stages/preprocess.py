"""The `preprocess` stage: the validated manifest split (the frozen test split kept) and written
as uint8 arrays per split (data/preprocess.py)."""

from __future__ import annotations

from multitag.config import Params
from multitag.data.summary import ProcessedSummary
from multitag.layout import Layout


def preprocess_stage(params: Params, layout: Layout = Layout()) -> ProcessedSummary:
    """Split the validated manifest and write the uint8 arrays per split."""
    from multitag.data.preprocess import preprocess
    from multitag.data.splits import dataset_key

    return preprocess(
        layout.validated / "manifest.parquet",
        layout.validated / "classes.json",
        layout.processed,
        params.preprocess,
        layout.frozen_test,
        dataset_key(params.data.source, params.data.path),
    )
