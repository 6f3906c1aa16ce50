"""The `validate` stage: the configured source and this task's feedback export, checked
(data/validation.py); a failed run writes its report and quarantine only."""

from __future__ import annotations

from pathlib import Path

from multitag.config import Params
from multitag.layout import Layout


def validate_stage(params: Params, layout: Layout = Layout()) -> dict[str, Path]:
    """Read the configured source and this task's feedback export, validate them, write
    manifest/quarantine/report; a failed run writes its report and quarantine only."""
    from multitag.data.sources import read_source
    from multitag.data.validation import ValidationFailed, validate, write_failure, write_outputs
    from multitag.feedback.retraining import feedback_records, refresh_feedback_export

    data = read_source(params.data)
    refresh_feedback_export(params, layout.feedback_export, layout.root)
    data.records += feedback_records(layout.feedback_export)
    try:
        result = validate(data, params.validate_, workers=params.preprocess.workers)
    except ValidationFailed as failure:
        if failure.result is not None:
            write_failure(failure.result, layout.validated)
        raise
    return write_outputs(result, layout.validated)
