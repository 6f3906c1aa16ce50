"""Pipeline stages as plain functions: `dvc repro` (through the CLI) and the Prefect tasks
both call these, so each stage is written once."""

from __future__ import annotations

from pathlib import Path

from multitag.config import Params
from multitag.errors import MissingInputError, UsageError
from multitag.layout import Layout
from multitag.reports import write_json


def synthesize_stage(params: Params, layout: Layout = Layout()) -> Path:
    """Generate the demo's shapes, only when they are the data; a photo source generates none.

    The folder still exists afterwards (empty but for a note if it never held shapes), because
    it is the `synthesize` stage's DVC out and `dvc commit` needs every out on disk.
    """
    from multitag.data.sources import synthetic

    target = layout.synthetic
    if params.data.source != "synthetic":
        target.mkdir(parents=True, exist_ok=True)
        if not any(target.iterdir()):
            (target / "NOT_GENERATED.txt").write_text(f"data.source is {params.data.source}: no shapes are generated.\n")
        return target
    settings = params.data.synthetic
    return synthetic.generate(target, settings.n_images, settings.image_size, settings.seed)


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


def preprocess_stage(params: Params, layout: Layout = Layout()) -> dict:
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


def train_stage(params: Params, architecture: str, layout: Layout = Layout(), init_model: Path | None = None, quick: bool = False) -> dict:
    """Train one architecture on the processed arrays (a warm start from `init_model`; `quick`:
    only its probe, else its head); writes models/<arch>/."""
    from dataclasses import asdict

    from multitag.modeling.train import train_architecture

    result = train_architecture(
        architecture, layout.processed, layout.models / architecture, params.train, init_model, layout.feature_cache, quick
    )
    return asdict(result)


def train_in_subprocess(
    architecture: str, params_path: Path, root: Path = Path("."), init_model: Path | None = None, quick: bool = False
) -> Path:
    """Train in a fresh process so TensorFlow's memory goes back to the OS when it ends."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "multitag.cli", "train", "--arch", architecture, "--params", str(params_path)]
    if init_model is not None:
        command += ["--init-model", str(init_model)] + (["--quick"] if quick else [])
    subprocess.run(command, cwd=root, check=True)
    return Layout(root).models / architecture


def evaluate_stage(params: Params, layout: Layout = Layout(), run_name: str = "pipeline", extra_tags: dict[str, str] | None = None) -> dict:
    """Score every trained architecture on the frozen test split and log them to MLflow.

    Writes metrics/dvclive/ (DVCLive's metrics.json and per-epoch plots, which dvc.yaml declares
    as the DVC metrics and plots), metrics/comparison.md and metrics/candidates.json (run ids and
    model URIs for the gate).
    """
    import json

    import keras
    import numpy as np

    from multitag.data.manifest import read_classes
    from multitag.data.preprocess import load_split
    from multitag.lifecycle import tracking
    from multitag.lifecycle.versioning import dvc_dir_hash, git_commit
    from multitag.modeling.evaluate import comparison_markdown, comparison_row, evaluate_model
    from multitag.modeling.train import MODEL_FILE, load_served_model, read_history

    classes = read_classes(layout.processed / "classes.json")
    tags = {"git_commit": git_commit(layout.root), "data_hash": dvc_dir_hash(layout.processed), **(extra_tags or {})}
    example = np.asarray(load_split(layout.processed, "test")[0][:16])
    rows, candidates, defaulted, histories = [], [], {}, {}
    with tracking.pipeline_run(run_name, tags) as parent:
        for architecture in params.train.architectures:
            model_dir = layout.models / architecture
            if not (model_dir / MODEL_FILE).exists():
                raise MissingInputError(f"{model_dir / MODEL_FILE} not found: run `multitag train --arch {architecture}` first")
            train_info = json.loads((model_dir / "train_info.json").read_text())
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
            candidates.append(
                {
                    "architecture": architecture,
                    "run_id": run_id,
                    "model_uri": model_uri,
                    **rows[-1],
                    f"val_{primary}": evaluation.val["tuned"][primary],
                }
            )
            keras.backend.clear_session()
        table = comparison_markdown(rows) + threshold_note(defaulted, params.evaluate)
        import mlflow

        mlflow.log_text(table, "comparison.md")
        mlflow.log_dict(rows, "comparison.json")
        parent_id = parent.info.run_id
    tracking.log_dvc_metrics(
        layout.dvclive,
        histories,
        {row["architecture"]: {**row, "default_threshold_classes": defaulted[row["architecture"]]} for row in rows},
    )
    (layout.metrics / "comparison.md").write_text(table)
    summary = {"parent_run_id": parent_id, "data_hash": tags["data_hash"], "git_commit": tags["git_commit"], "candidates": candidates}
    write_json(layout.metrics / "candidates.json", summary)
    return summary


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


def gate_stage(params: Params, layout: Layout = Layout()) -> dict:
    """Pick the best candidate by validation score and judge it against the champion.

    Selection uses validation, never test, so the gate's test comparison stays unbiased.
    Writes reports/gate.json (naming the exact candidate judged: `policy.candidate_identity`) and
    reports/gate.md. A registry that cannot be read stops the gate (RegistryUnavailableError):
    judging as if there were no champion would let any candidate through.
    """
    import json

    from multitag.lifecycle import gate, policy, registry
    from multitag.modeling.baselines import score_baselines

    summary = json.loads((layout.metrics / "candidates.json").read_text())
    best = policy.select_candidate(summary["candidates"], params.evaluate.primary_metric)
    champion = registry.alias_version(params.registry.model_name, registry.CHAMPION)
    champion_uri = f"models:/{params.registry.model_name}/{champion.version}" if champion else None
    baselines = [] if champion else score_baselines(params.gate.baselines, layout.processed, params.train.seed)
    verdict = gate.judge(
        best["model_uri"],
        champion_uri,
        champion.version if champion else None,
        params.gate,
        params.evaluate.primary_metric,
        layout,
        baselines,
    )
    result = gate_record(summary, best, verdict)
    write_json(layout.reports / "gate.json", result)
    (layout.reports / "gate.md").write_text(gate.verdict_markdown(verdict))
    return result


def register_stage(params: Params, layout: Layout = Layout(), extra_tags: dict[str, str] | None = None) -> dict:
    """Register every evaluated candidate; move aliases for the gated one by its verdict.

    Refuses a verdict about other candidates (`policy.judged_candidate`) and promotes only if the
    champion is still the one the gate judged against (compare-and-set under the registry lock).
    Safe to repeat: a candidate's run is registered once, and promoting the champion again is a
    no-op. Writes reports/registration.json (the version numbers, the verdict, the champion now).
    """
    import json

    from multitag.lifecycle import policy, registry

    summary = json.loads((layout.metrics / "candidates.json").read_text())
    gate_result = json.loads((layout.reports / "gate.json").read_text())
    judged = policy.judged_candidate(summary, gate_result)
    name = params.registry.model_name
    versions = {}
    for candidate in summary["candidates"]:
        selected = candidate is judged
        tags = {
            "architecture": candidate["architecture"],
            "data_hash": summary["data_hash"],
            "git_commit": summary["git_commit"],
            "run_id": candidate["run_id"],
            "parent_run_id": summary["parent_run_id"],
            **{k: candidate[k] for k in ("val_mAP", "test_mAP", "test_macro_f1", "latency_ms", "size_mb")},
            **(
                gate_result["tags"]
                if selected
                else {"gate_verdict": "not_selected", "gate_reasons": f"lower validation score than {gate_result['selected']}"}
            ),
            **(extra_tags or {}),
        }
        versions[candidate["architecture"]] = registry.register_run(candidate["model_uri"], name, candidate["run_id"], tags)
        evidence = gate_result.get("evidence", "") if selected else ""
        registry.describe(
            name, versions[candidate["architecture"]], card(name, versions[candidate["architecture"]], candidate, tags, evidence, layout)
        )
    selected_version = versions[judged["architecture"]]
    passed = gate_result["verdict"]["passed"]
    if passed:
        registry.promote(name, selected_version, expected_champion=gate_result["verdict"]["champion_version"])
    elif params.gate.register_failed_as_challenger:
        registry.mark_challenger(name, selected_version)
    champion = registry.alias_version(name, registry.CHAMPION)
    result = {
        "model_name": name,
        "versions": versions,
        "selected": gate_result["selected"],
        "selected_version": selected_version,
        "verdict": "passed" if passed else "failed",
        "reasons": gate_result["verdict"]["reasons"],
        "evidence": gate_result.get("evidence", ""),
        "champion_version": champion.version if champion else None,
    }
    write_json(layout.reports / "registration.json", result)
    return result


def card(name: str, version: str, candidate: dict, tags: dict[str, str], evidence: str, layout: Layout) -> str:
    """The version's model card (lifecycle/model_card.py) from what the stages wrote: the processed
    data's summary, the training record, the run's evaluation and the gate's tags. A record that is
    missing (a workspace assembled by hand) leaves its part of the card empty: documentation never
    stops a registration."""
    import json

    import mlflow

    from multitag.lifecycle.model_card import CardFacts, model_card

    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    data = read(layout.processed / "summary.json")
    trained = read(layout.models / candidate["architecture"] / "train_info.json")
    try:
        test = mlflow.artifacts.load_dict(f"runs:/{candidate['run_id']}/evaluation.json")["test"]["tuned"]
    except Exception:  # no evaluation logged with the run (MLflow raises its own, store-specific errors)
        test = {}
    exported = tags.get("export_parity") == "passed"
    runtime = f"TFLite (parity with Keras held, max score difference {tags.get('export_max_score_difference')})" if exported else "Keras"
    facts = CardFacts(
        name=name,
        version=str(version),
        architecture=candidate["architecture"],
        run_id=candidate["run_id"],
        dataset=data.get("dataset", "not recorded"),
        splits=data.get("splits", {}),
        test_from_corrections=int(data.get("test_from_corrections", 0)),
        corrections_used=len([i for i in tags.get("feedback_ids", "").split(",") if i]),
        start=trained.get("start", "cold"),
        warm_start_version=tags.get("warm_start_version"),
        headline={k: test.get(k) for k in ("mAP", "macro_f1", "micro_f1")},
        per_class=test.get("per_class", {}),
        verdict=tags["gate_verdict"],
        reasons=tags.get("gate_reasons", ""),
        evidence=evidence,
        runtime=runtime,
    )
    return model_card(facts)


def gate_record(summary: dict, best: dict, verdict) -> dict:
    """reports/gate.json: the verdict, the version tags behind it, and the exact candidate judged."""
    from multitag.lifecycle import gate, policy

    return {
        "selected": best["architecture"],
        "candidate": policy.candidate_identity(summary, best),
        "verdict": gate.as_dict(verdict),
        "evidence": verdict.evidence(),
        "tags": verdict.tags(),
    }


def outcome_message(registration: dict) -> str:
    """How every run ends: what is served now, or why nothing is and what to do next."""
    name, champion = registration["model_name"], registration["champion_version"]
    selected, version = registration["selected"], registration["selected_version"]
    if registration["verdict"] == "passed":
        head = f"Gate passed: {selected} (version {version}) is now the champion of {name}."
    else:
        reasons = "; ".join(registration["reasons"]) or "see reports/gate.md"
        head = f"Gate failed for {selected} (version {version}, now `challenger`): {reasons}."
    if registration.get("evidence"):
        head += f"\nEvidence: {registration['evidence']}."
    if champion is None:
        return (
            f"{head}\nNothing is served for {name} yet. Next: read reports/gate.md; to serve this model anyway, "
            f"`multitag registry promote {version}`; or improve it (more photos, `train` params) and run the pipeline again."
        )
    served = f"models:/{name}@champion (version {champion})"
    return (
        f"{head}\nServed now: {served}. Next: `multitag serve` and open the page, or `multitag predict models:/{name}@champion PHOTO.jpg`."
    )
