"""The manifest's data contract: a Great Expectations suite, built in code, whose every expectation
names the quarantine reason of the rows it fails, and the run that turns its failing rows into
those reasons (with a detail a person can act on).

It lives apart from validation.py, which inspects the images, settles duplicates and writes the
report, because it is the part that changes when the contract does (a new rule is one
expectation, its reason and its detail here), and because Great Expectations is slow to import
(about 4 s): only a run of the suite pays for it.
"""

from __future__ import annotations

import pandas as pd

from multitag.config import ValidateParams
from multitag.data.manifest import SPLITS
from multitag.errors import Problem


def run_suite(frame: pd.DataFrame, classes: list[str], params: ValidateParams, reasons: dict[int, Problem]) -> list[dict]:
    """Run the manifest suite with row-level results; failing rows get the expectation's reason."""
    import great_expectations as gx  # slow import (~4 s): only this stage pays for it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    known = set(classes)
    checked = frame.assign(
        row=range(len(frame)),
        n_labels=frame["labels"].map(len),
        unknown_labels=frame["labels"].map(lambda xs: "|".join(x for x in xs if x not in known)),
        partial_split=frame["split"].where(frame["unknown"].map(len) > 0, "train"),  # partial labels train only
    )
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("multitag").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": checked})
    result = batch.validate(
        manifest_suite(gx, params),
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row"]},
    )
    summary = []
    for item in result.results:
        reason = item.expectation_config.meta["reason"]
        rows = [hit["row"] for hit in item.result.get("unexpected_index_list") or []]
        for row in rows:
            reasons.setdefault(int(row), Problem(reason, _detail(reason, checked.iloc[int(row)], params)))
        summary.append(
            {"expectation": item.expectation_config.type, "reason": reason, "success": bool(item.success), "failing_rows": len(rows)}
        )
    return summary


def manifest_suite(gx, params: ValidateParams):
    """The manifest's data contract, built in code; each expectation names its quarantine reason."""
    expectations = gx.expectations
    suite = gx.ExpectationSuite(name="manifest")
    suite.add_expectation(expectations.ExpectColumnValuesToNotBeNull(column="image_id", meta={"reason": "missing_id"}))
    suite.add_expectation(
        expectations.ExpectColumnValuesToBeInSet(column="unknown_labels", value_set=[""], meta={"reason": "unknown_class"})
    )
    suite.add_expectation(
        expectations.ExpectColumnValuesToBeBetween(column="n_labels", min_value=params.min_labels, meta={"reason": "no_labels"})
    )
    suite.add_expectation(
        expectations.ExpectColumnValuesToBeInSet(column="split", value_set=[*SPLITS, ""], meta={"reason": "unknown_split"})
    )
    suite.add_expectation(  # val and test stay fully labelled: thresholds and metrics need every class's answer
        expectations.ExpectColumnValuesToBeInSet(
            column="partial_split", value_set=["train", ""], meta={"reason": "partial_labels_outside_train"}
        )
    )
    suite.add_expectation(
        expectations.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$", meta={"reason": "not_inspected"})
    )
    return suite


def _detail(reason: str, row: pd.Series, params: ValidateParams) -> str:
    if reason == "unknown_class":
        return f"labels not in the class list: {row['unknown_labels'].replace('|', ', ')}"
    if reason == "no_labels":
        return f"{row['n_labels']} labels, at least {params.min_labels} required"
    if reason == "unknown_split":
        return f"split {row['split']!r} is not one of {', '.join(SPLITS)}"
    if reason == "partial_labels_outside_train":
        return f"unknown classes ({', '.join(row['unknown'])}) in the {row['split']} split: partial labels can only train"
    return reason
