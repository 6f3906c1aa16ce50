"""Pipeline stages as plain functions: `dvc repro` (through the CLI) and the Prefect tasks
both call these, so each stage is written once."""

from __future__ import annotations

from pathlib import Path

from multitag.config import Params
from multitag.layout import Layout


def validate_stage(params: Params, layout: Layout = Layout()) -> dict[str, Path]:
    """Read the configured source, validate it, write manifest/quarantine/report."""
    from multitag.sources import read_source
    from multitag.validation import validate, write_outputs

    data = read_source(params.data)
    result = validate(data, params.validate_, workers=params.preprocess.workers)
    return write_outputs(result, layout.validated)


def preprocess_stage(params: Params, layout: Layout = Layout()) -> dict:
    """Split the validated manifest and write the uint8 arrays per split."""
    from multitag.preprocess import preprocess

    return preprocess(
        layout.validated / "manifest.parquet",
        layout.validated / "classes.json",
        layout.processed,
        params.preprocess,
        layout.frozen_test,
    )
