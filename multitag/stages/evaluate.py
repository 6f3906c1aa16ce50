"""The `evaluate` stage: every trained architecture scored on the frozen test split, logged to
MLflow with its answers, and the comparison the gate selects from (metrics/candidates.json)."""

from __future__ import annotations

from multitag.config import Params
from multitag.errors import MissingInputError, UsageError
from multitag.layout import Layout
from multitag.lifecycle.candidates import Candidate, Candidates


def evaluate_stage(
    params: Params, layout: Layout = Layout(), run_name: str = "pipeline", extra_tags: dict[str, str] | None = None
) -> Candidates:
    """Score every trained architecture on the frozen test split and log them to MLflow.

    Writes metrics/dvclive/ (DVCLive's metrics.json and per-epoch plots, which dvc.yaml declares
    as the DVC metrics and plots), metrics/comparison.md and metrics/candidates.json (run ids and
    model URIs for the gate).
    """

    import keras
    import numpy as np

    from multitag.data.manifest import read_classes
    from multitag.data.preprocess import load_split
    from multitag.lifecycle import tracking
    from multitag.lifecycle.versioning import dvc_dir_hash, git_commit
    from multitag.modeling.evaluate import comparison_markdown, comparison_row, evaluate_model
    from multitag.modeling.train import MODEL_FILE, load_served_model, read_history
    from multitag.modeling.train_record import TrainResult

    classes = read_classes(layout.processed / "classes.json")
    tags = {"git_commit": git_commit(layout.root), "data_hash": dvc_dir_hash(layout.processed), **(extra_tags or {})}
    example = np.asarray(load_split(layout.processed, "test")[0][:16])
    rows, candidates, defaulted, histories = [], [], {}, {}
    with tracking.pipeline_run(run_name, tags) as parent:
        for architecture in params.train.architectures:
            model_dir = layout.models / architecture
            if not (model_dir / MODEL_FILE).exists():
                raise MissingInputError(f"{model_dir / MODEL_FILE} not found: run `multitag train --arch {architecture}` first")
            train_info = TrainResult.read(model_dir)
            history = histories[architecture] = read_history(model_dir)
            model = load_served_model(model_dir)
            evaluation = evaluate_model(
                architecture, model, model_dir / MODEL_FILE, layout.processed, classes, params.evaluate, layout.feature_cache
            )
            run_id, model_uri = tracking.log_candidate(model, evaluation, train_info, history, example, params.preprocess.resize, tags)
            log_scores(model_uri, evaluation, layout, int(example.shape[1]), params.preprocess.resize)
            rows.append(comparison_row(evaluation, train_info))
            defaulted[architecture] = evaluation.default_threshold_classes
            primary = params.evaluate.primary_metric  # the gate selects on its validation value
            row = {key: value for key, value in rows[-1].items() if key != "architecture"}
            candidates.append(Candidate(architecture, run_id, model_uri, {**row, f"val_{primary}": evaluation.val["tuned"][primary]}))
            keras.backend.clear_session()
        table = comparison_markdown(rows) + threshold_note(defaulted, params.evaluate)
        import mlflow

        mlflow.log_text(table, layout.comparison.name)
        mlflow.log_dict(rows, "comparison.json")
        parent_id = parent.info.run_id
    tracking.log_dvc_metrics(
        layout.dvclive,
        histories,
        {row["architecture"]: {**row, "default_threshold_classes": defaulted[row["architecture"]]} for row in rows},
    )
    layout.comparison.write_text(table)
    record = Candidates(parent_id, tags["data_hash"], tags["git_commit"], candidates)
    record.write(layout.candidates)
    return record


def log_scores(model_uri: str, evaluation, layout: Layout, image_size: int, resize: str) -> None:
    """Store the candidate's validation and test answers with it (lifecycle/scores.py): the gate
    reuses them and the results browser shows them."""
    import numpy as np
    import pandas as pd

    from multitag.data.manifest import read
    from multitag.lifecycle import scores

    manifest = read(layout.processed / "manifest.parquet")
    rows = pd.concat([manifest[manifest["split"] == split] for split in ("val", "test")])
    answers = np.concatenate([evaluation.scores_val, evaluation.scores_test])
    scores.log_with_model(model_uri, scores.table(rows, answers, evaluation.classes, image_size, resize))


def threshold_note(defaulted: dict[str, list[str]], params) -> str:
    """Which classes kept the default threshold, and why, under the comparison table."""
    lines = [f"- {arch}: {', '.join(names)}" for arch, names in defaulted.items() if names]
    if not lines:
        return ""
    head = (
        f"\nThreshold {params.default_threshold} kept (fewer than {params.min_threshold_positives} validation positives, "
        f"too few to tune); tuned thresholds are bounded to {list(params.threshold_bounds)}:\n\n"
    )
    return head + "\n".join(lines) + "\n"


def evaluate_uri(model_uri: str, params: Params, layout: Layout = Layout()) -> dict:
    """Score one logged model on the current frozen test split with its stored thresholds."""
    import numpy as np

    from multitag.data.preprocess import load_split
    from multitag.lifecycle.predictor import Predictor
    from multitag.modeling import metrics
    from multitag.modeling.evaluate import predict

    predictor = Predictor.from_uri(model_uri)
    x_test, y_test = load_split(layout.processed, "test")
    if x_test.shape[1] != predictor.input_size:
        raise UsageError(
            f"{model_uri} expects {predictor.input_size}px images but data/processed holds {x_test.shape[1]}px; set preprocess.image_size"
        )
    scores = predict(predictor.model, x_test)
    result = metrics.compute_metrics(np.asarray(y_test), scores, predictor.thresholds, predictor.classes)
    return {"model_uri": model_uri, **{k: v for k, v in result.items() if k != "per_class"}}
