"""The `multitag` command line: thin Typer commands over the library's stage functions."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from multitag.config import Params, Source, load_params
from multitag.errors import MissingInputError, MultitagError, UsageError
from multitag.feedback.schema import RequeueState, State
from multitag.layout import Layout
from multitag.workspace import exclusive_run

if TYPE_CHECKING:
    from multitag.feedback.predictions import PredictionLog
    from multitag.lifecycle.registry import VersionInfo

out = Console()  # what a command produces: tables, reports, JSON
console = Console(stderr=True)  # what it says about its progress and problems

P = ParamSpec("P")
R = TypeVar("R")


class Commands(TyperGroup):
    """Every command ends a domain error the same way: its message in red, exit code 1.
    Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MultitagError as err:
            console.print(Text(f"{type(err).__name__}: {err}", style="red"))
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=Commands, help="multitag: multi-label image classification pipeline.", no_args_is_help=True, pretty_exceptions_enable=False
)
data_app = typer.Typer(help="Download, validate, preprocess and describe datasets.", no_args_is_help=True)
feedback_app = typer.Typer(help="The feedback queue of users' corrected labels.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
registry_app = typer.Typer(help="Inspect and move the model registry's aliases.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")

ParamsOption = typer.Option(Path("params.yaml"), "--params", help="Parameters file.")


def exclusive(command: Callable[P, R]) -> Callable[P, R]:
    """The command holds the workspace while it runs: one pipeline run at a time (multitag.workspace)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with exclusive_run(f"multitag {command.__name__.replace('_', ' ')}"):
            return command(*args, **kwargs)

    return run


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="Dataset name, e.g. voc2007."),
    raw_dir: Path = typer.Option(Layout().raw, help="Where archives are kept and extracted."),
    base_url: str | None = typer.Option(None, help="Mirror to download from instead of the official host."),
) -> None:
    """Download (resumable, checksum-verified) and extract a known dataset."""
    from multitag.data.download import download_dataset

    root = download_dataset(name, raw_dir, base_url)
    console.print(f"[green]{name} ready at {root}[/green]; set data.source and data.path in params.yaml to use it.")


@data_app.command("synthesize")
@exclusive
def data_synthesize(params_path: Path = ParamsOption) -> None:
    """Generate the synthetic shapes dataset (data.synthetic) into data/raw/synthetic; a photo
    source generates nothing."""
    from multitag.stages import synthesize_stage

    params = load_params(params_path)
    root = synthesize_stage(params)
    if params.data.source == "synthetic":
        console.print(f"[green]{params.data.synthetic.n_images} synthetic images in {root}[/green]")
    else:
        console.print(f"data.source is {params.data.source}: no shapes generated")


@data_app.command("validate")
@exclusive
def data_validate(params_path: Path = ParamsOption) -> None:
    """Validate the configured dataset; bad items go to the quarantine table."""
    from multitag.stages import validate_stage

    params = load_params(params_path)
    paths = validate_stage(params)
    report = json.loads(paths["report_json"].read_text())
    console.print(
        f"[green]{report['images_valid']} valid[/green], {report['images_quarantined']} quarantined "
        f"({', '.join(f'{k}: {v}' for k, v in report['quarantine_reasons'].items()) or 'none'}). Report: {paths['report_md']}"
    )


@data_app.command("preprocess")
@exclusive
def data_preprocess(params_path: Path = ParamsOption) -> None:
    """Split and write uint8 arrays per split to data/processed/."""
    from multitag.stages import preprocess_stage

    params = load_params(params_path)
    summary = preprocess_stage(params)
    console.print(f"[green]Wrote {summary['splits']} images at {summary['image_size']}px[/green] to {Layout().processed}")


@data_app.command("describe")
def data_describe(params_path: Path = ParamsOption) -> None:
    """Show per-class counts per split and the quarantine table of the last validation (a failed one's too),
    with where each quarantined item came from: the dataset or the feedback export."""
    layout = Layout()
    report_path = layout.validated / "report.json"
    if not report_path.exists():
        raise MissingInputError(f"{report_path} not found: run `multitag data validate` first")
    report = json.loads(report_path.read_text())
    if report.get("failure"):
        console.print(Text(f"The last validation failed: {report['failure']}", style="red"))
    splits = sorted({s for counts in report["per_class_counts"].values() for s in counts})
    table = Table(title=f"{report['images_valid']} valid images, {report['images_quarantined']} quarantined")
    for column in ["class", *splits]:
        table.add_column(column)
    for name, counts in report["per_class_counts"].items():
        table.add_row(name, *(str(counts.get(s, 0)) for s in splits))
    out.print(table)
    import pandas as pd

    from multitag.data.validation import origin

    quarantine = pd.read_parquet(layout.validated / "quarantine.parquet")
    if len(quarantine):
        quarantine["from"] = quarantine["source"].map(origin)
        out.print(quarantine[["image_id", "from", "reason", "detail"]].to_string(index=False))


@app.command("train")
@exclusive
def train(
    arch: list[str] = typer.Option([], "--arch", help="Architecture(s) to train; default: train.architectures."),
    params_path: Path = ParamsOption,
    init_model: Path | None = typer.Option(None, help="A saved model.keras to warm-start from."),
    quick: bool = typer.Option(False, "--quick", help="With --init-model: refit only its probe (else its head) on cached features."),
) -> None:
    """Train architectures on data/processed (each in its own process when several)."""
    from multitag.modeling.train import best_val_text
    from multitag.stages import train_in_subprocess, train_stage

    if quick and init_model is None:
        raise UsageError("--quick refits a trained model's probe (else its head): give it --init-model")
    params = load_params(params_path)
    names = arch or params.train.architectures
    if len(names) == 1:
        result = train_stage(params, names[0], init_model=init_model, quick=quick)
        console.print(f"[green]{names[0]}[/green]: {best_val_text(result['best_val_mAP'])} in {result['train_seconds']:.0f}s")
    else:
        for name in names:
            train_in_subprocess(name, params_path, init_model=init_model, quick=quick)


@app.command("evaluate")
@exclusive
def evaluate(
    model_uri: str | None = typer.Argument(None, help="An MLflow model URI; default: evaluate every trained architecture."),
    params_path: Path = ParamsOption,
    run_name: str = typer.Option("pipeline", help="Name of the MLflow parent run."),
    tag: list[str] = typer.Option([], help="Extra KEY=VALUE tags for the MLflow runs."),
    report: bool = typer.Option(
        False, "--report", help="Score nothing: write reports/results.html, where the champion (and challenger) is wrong."
    ),
) -> None:
    """Score models on the frozen test split (thresholds tuned on validation)."""
    params = load_params(params_path)
    if report:
        from multitag.lifecycle.results import registry_report

        path = registry_report(params.registry.model_name, Layout().reports / "results.html")
        console.print(f"Wrote {path}: per-class results and the photos behind each error; open it in a browser.")
    elif model_uri is None:
        from multitag.stages import evaluate_stage

        summary = evaluate_stage(params, run_name=run_name, extra_tags=dict(t.split("=", 1) for t in tag))
        out.print((Layout().metrics / "comparison.md").read_text())
        console.print(f"MLflow parent run {summary['parent_run_id']}")
    else:
        from multitag.stages import evaluate_uri

        out.print_json(data=evaluate_uri(model_uri, params))


@app.command("predict")
def predict(
    model_uri: str = typer.Argument(..., help="MLflow model URI, e.g. models:/multitag@champion."),
    images: list[Path] = typer.Argument(..., help="Image files."),
) -> None:
    """Print each image's predicted labels and every class probability."""
    from multitag.lifecycle.predictor import Predictor
    from multitag.native_logs import tensorflow_quietly

    with tensorflow_quietly():
        predictor = Predictor.from_uri(model_uri)
    for path in images:
        try:
            result = predictor.predict_bytes([path.read_bytes()])[0]
        except (OSError, ValueError) as err:
            console.print(f"[red]{path}: {err}[/red]")
            continue
        probabilities = ", ".join(f"{c}={p:.3f}" for c, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]))
        out.print(f"{path}: [bold]{', '.join(result.labels) or '(no label)'}[/bold]  ({probabilities})")


@app.command("tag")
def tag(
    paths: list[str] = typer.Argument(..., help="Photos, folders (searched recursively) or glob patterns ('photos/**/*.jpg')."),
    out_path: Path = typer.Option(..., "--out", help="Where the tags go: a .csv or a .jsonl file (re-runs skip what it holds)."),
    model_uri: str | None = typer.Option(None, "--model", help="MLflow model URI; default: the champion of params' model."),
    workers: int = typer.Option(4, min=1, help="Threads that read and decode photos."),
    xmp: bool = typer.Option(False, "--xmp", help="Also write the labels into each photo's XMP sidecar (photo.xmp), merged."),
    xmp_root: str = typer.Option("multitag", help="The sidecars' hierarchical keyword root (multitag|cat)."),
    params_path: Path = ParamsOption,
) -> None:
    """Tag a photo library: every photo's labels and scores into a CSV or JSON Lines file, resumable."""
    from multitag.lifecycle.predictor import Predictor
    from multitag.native_logs import tensorflow_quietly
    from multitag.tagging import model_to_tag_with, photos_under, tag_library

    model_uri, name, version = model_to_tag_with(load_params(params_path).registry.model_name, model_uri)
    photos = photos_under(paths)
    with tensorflow_quietly():
        predictor = Predictor.from_uri(model_uri)
    console.print(f"{len(photos)} photo(s); {model_uri} through {predictor.info['runtime']}")
    summary = tag_library(predictor, name, version, photos, out_path, workers, xmp_root=xmp_root if xmp else None)
    counts = ", ".join(f"{label} {count}" for label, count in summary.per_class.most_common()) or "none"
    console.print(f"tagged {summary.tagged}, unchanged and skipped {summary.skipped}, failed {len(summary.failed)}; labels: {counts}")
    for row in summary.failed[:20]:
        console.print(Text(f"{row.path}: {row.error}", style="red"))  # a file name is no markup
    console.print(f"tags written to {out_path}" + (f"; {summary.sidecars} XMP sidecar(s) written or updated" if xmp else ""))


@app.command("gate")
@exclusive
def gate(params_path: Path = ParamsOption) -> None:
    """Judge the best candidate against the champion; writes reports/gate.md."""
    from multitag.stages import gate_stage

    result = gate_stage(load_params(params_path))
    out.print((Layout().reports / "gate.md").read_text())
    console.print(f"selected {result['selected']}: {'PASSED' if result['verdict']['passed'] else 'FAILED'}")


@app.command("register")
@exclusive
def register(params_path: Path = ParamsOption) -> None:
    """Register every candidate and move aliases by the gate's verdict."""
    from multitag.stages import register_stage

    result = register_stage(load_params(params_path))
    from multitag.stages import outcome_message

    console.print(f"registered {result['versions']}; verdict {result['verdict']}")
    console.print(outcome_message(result))


@registry_app.command("list")
def registry_list(params_path: Path = ParamsOption) -> None:
    """Every version with its aliases, architecture, test mAP and gate verdict."""
    from multitag.lifecycle import registry

    name = load_params(params_path).registry.model_name
    table = Table(title=f"registered model {name}")
    for column in ("version", "aliases", "architecture", "test_mAP", "verdict", "data_hash"):
        table.add_column(column, no_wrap=column == "aliases", overflow="fold")  # an alias is read whole, never cut
    for v in registry.list_versions(name):
        test_map = v.tags.get("test_mAP", "")
        table.add_row(
            v.version,
            "\n".join(v.aliases),
            v.tags.get("architecture", ""),
            f"{float(test_map):.4f}" if test_map else "",
            v.tags.get("gate_verdict", ""),
            v.tags.get("data_hash", "")[:12],
        )
    out.print(table)


@registry_app.command("promote")
def registry_promote(
    version: str,
    ignore_shadow: bool = typer.Option(
        False, "--ignore-shadow", help="Promote the challenger even if its shadow record fails gate.shadow_*."
    ),
    params_path: Path = ParamsOption,
) -> None:
    """Make VERSION the champion (the former one becomes previous-champion). Promoting the challenger
    first checks its shadow record against gate.shadow_min_agreement / shadow_require_feedback_win."""
    from multitag.feedback.shadow import guard_promotion
    from multitag.lifecycle import registry

    params = load_params(params_path)
    name = params.registry.model_name
    if not ignore_shadow:
        guard_promotion(params, _queue(params_path), version)
    former = registry.promote(name, version)
    console.print(f"[green]champion is now version {version}[/green]" + (f" (previous-champion: {former.version})" if former else ""))


@registry_app.command("shadow-report")
def registry_shadow_report(
    limit: int = typer.Option(10_000, help="Read the newest LIMIT images the challenger scored."), params_path: Path = ParamsOption
) -> None:
    """How the challenger, scoring live traffic in shadow mode, answered compared with the champion, per class."""
    from multitag.feedback.shadow import challenger_report, refusals, requires_shadow

    params = load_params(params_path)
    report = challenger_report(params, _queue(params_path), limit)
    table = Table(
        title=f"{report.model_name}: challenger {report.challenger_version} vs champion {report.champion_version or '(any)'}, "
        f"{report.images} image(s), agreement {rate(report.agreement)}, exact {rate(report.exact_agreement)}"
    )
    for column in ("class", "images", "agreement", "champion tags", "challenger tags", "feedback", "champion right", "challenger right"):
        table.add_column(column)
    for c in report.classes:
        table.add_row(
            c.name,
            str(c.images),
            rate(c.agreement),
            rate(c.champion_tag_rate),
            rate(c.challenger_tag_rate),
            str(c.feedback_images),
            str(c.champion_correct),
            str(c.challenger_correct),
        )
    out.print(table)
    for side, names in (("champion", report.champion_only_classes), ("challenger", report.challenger_only_classes)):
        if names:
            console.print(f"only the {side} knows (not compared): {', '.join(names)}")
    console.print(
        f"on {report.feedback_images} corrected image(s): champion right {report.champion_correct}, challenger {report.challenger_correct}"
    )
    if not requires_shadow(params.gate):
        console.print("the gate has no shadow settings (gate.shadow_min_agreement, gate.shadow_require_feedback_win)")
    elif reasons := refusals(report, params.gate):
        console.print(f"[yellow]the gate would refuse to promote it: {'; '.join(reasons)}[/yellow]")
    else:
        console.print("[green]the gate's shadow settings allow promoting it[/green]")


def rate(value: float | None) -> str:
    """A share for a table: three decimals, or '-' when there was nothing to count."""
    return "-" if value is None else f"{value:.3f}"


@registry_app.command("rollback")
def registry_rollback(params_path: Path = ParamsOption) -> None:
    """Move champion back to previous-champion in one step."""
    from multitag.lifecycle import registry

    old, new = registry.rollback(load_params(params_path).registry.model_name)
    console.print(f"[green]rolled back: champion {old} -> {new}[/green]")


def _queue(params_path: Path):
    """The queue of the task params.yaml names (its registered model): every feedback command sees that task's items."""
    from multitag.feedback.retraining import open_queue

    return open_queue(load_params(params_path))


@feedback_app.command("stats")
def feedback_stats(params_path: Path = ParamsOption) -> None:
    """The task's items per state and pending items per label; how many items are unassigned."""
    queue = _queue(params_path)
    out.print_json(data={"task": queue.task, **queue.stats(), "unassigned": queue.unassigned_count()})


@feedback_app.command("list")
def feedback_list(
    state: State | None = typer.Option(None, help="Only items in this state."),
    limit: int = typer.Option(50),
    unassigned: bool = typer.Option(False, "--unassigned", help="The items of no task (queued before tasks were recorded)."),
    params_path: Path = ParamsOption,
) -> None:
    """The task's newest items (optionally of one state), or the unassigned ones."""
    queue = _queue(params_path)
    if unassigned:
        queue = queue.for_task(None)
    table = Table(title=f"feedback of {'no task (unassigned: `multitag feedback adopt` takes them)' if unassigned else queue.task}")
    for column in ("id", "state", "labels", "absent", "image", "model", "origin", "reason"):
        table.add_column(column)
    for item in queue.list_items(state, limit):
        absent = "(all others)" if item.absent is None else "|".join(item.absent) or "(none: the others unknown)"
        row = (
            str(item.id),
            item.state,
            "|".join(item.labels),
            absent,
            item.image_sha256[:12],
            item.model_version or "",
            item.origin,
            item.reason or "",
        )
        table.add_row(*map(Text, row))  # plain text: a sender's model_version such as "[/bold]" is no Rich markup
    out.print(table)
    if not unassigned and (waiting := queue.unassigned_count()):
        console.print(f"[yellow]{waiting} item(s) belong to no task: `multitag feedback list --unassigned`, then `feedback adopt`[/]")


@feedback_app.command("adopt")
def feedback_adopt(
    ids: list[int] = typer.Argument(None, help="Unassigned item ids; default: every unassigned item."),
    params_path: Path = ParamsOption,
) -> None:
    """Give unassigned items (queued before corrections recorded their task) to the task params.yaml names,
    in the state they are in: pending ones wait for its next retraining, consumed ones join its export."""
    queue = _queue(params_path)
    console.print(f"{queue.adopt(ids or None)} items now belong to {queue.task}")


def _logged_champion(params: Params, params_path: Path) -> tuple[VersionInfo, dict, PredictionLog]:
    """The champion's version, its logged metadata (classes, thresholds, drift reference) and the
    prediction log holding its answers: what `feedback suggest` and `feedback drift` read. A clear
    error when no answers are logged or there is no champion."""
    from multitag.feedback.predictions import PredictionLog
    from multitag.lifecycle import registry, tracking

    if params.serve.prediction_log_hours <= 0:
        raise UsageError("serve.prediction_log_hours is 0, so no answers are logged to read: set it above 0 and serve")
    name = params.registry.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    if champion is None:
        raise MissingInputError(f"no champion of {name}: run `make demo` or `multitag pipeline` to register one")
    meta = tracking.logged_metadata(tracking.download_model(f"models:/{name}/{champion.version}"))
    return champion, meta, PredictionLog(_queue(params_path).database, params.serve.prediction_log_hours * 3600)


@feedback_app.command("suggest")
def feedback_suggest(
    n: int = typer.Option(20, "--n", min=1, help="How many images to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    params_path: Path = ParamsOption,
) -> None:
    """The logged images most worth a human look, as GET /review lists them: champion and challenger
    disagree, or a score sits near its threshold; none labelled already, no near-duplicates."""
    from multitag.feedback import review

    params = load_params(params_path)
    name = params.registry.model_name
    champion, meta, log = _logged_champion(params, params_path)
    max_age_s = params.serve.prediction_retention_hours * 3600  # older images are no longer stored
    items = review.suggest(log, _queue(params_path), name, champion.version, dict(zip(meta["classes"], meta["thresholds"])), n, max_age_s)
    if as_json:
        out.print_json(data=list(review.as_rows(items)))
        return
    table = Table(title=f"{len(items)} image(s) to review, answers of {name} v{champion.version}")
    for column in ("#", "image", "labels", "challenger", "margin", "reason"):
        table.add_column(column)
    for rank, item in enumerate(items, 1):
        challenger = "|".join(item.challenger_labels) if item.challenger_labels is not None else ""
        table.add_row(str(rank), item.image_sha256[:12], "|".join(item.labels), challenger, f"{item.margin:.2f}", item.reason)
    out.print(table)


@feedback_app.command("import")
def feedback_import(directory: Path, params_path: Path = ParamsOption) -> None:
    """Queue a folder of images with DIR/labels.csv (filename,labels; labels separated by '|')."""
    from multitag.feedback.importer import import_dir

    params = load_params(params_path)
    report = import_dir(_queue(params_path), directory, min_labels=params.validate_.min_labels)
    console.print(f"added {len(report.added)}, merged {len(report.merged)}, errors {len(report.errors)}")
    for problem in report.errors:
        console.print(f"[yellow]line {problem.line} {problem.filename}: {problem.reason}[/yellow]")


@feedback_app.command("requeue")
def feedback_requeue(
    ids: list[int] = typer.Argument(None, help="Item ids; default: every item in --state."),
    state: RequeueState = typer.Option("rejected", help="Which items to put back."),
    params_path: Path = ParamsOption,
) -> None:
    """Put rejected, held (released after review: the screen lets them through) or consumed items back to pending."""
    count = _queue(params_path).requeue(ids or None, state)
    console.print(f"{count} items back to pending")


@feedback_app.command("reject")
def feedback_reject(
    ids: list[int] = typer.Argument(..., help="Item ids (pending, claimed or held)."),
    reason: str = typer.Option(..., "--reason", help="Why: `feedback list` shows it."),
    params_path: Path = ParamsOption,
) -> None:
    """Reject open items (e.g. held ones a reviewer found wrong) so they never train."""
    count = _queue(params_path).reject(ids, reason)
    console.print(f"{count} items rejected")


@feedback_app.command("drift")
def feedback_drift(
    as_json: bool = typer.Option(False, "--json", help="Print GET /drift's JSON body instead of a table."),
    params_path: Path = ParamsOption,
) -> None:
    """The champion's last serve.drift_window logged answers against its per-class rates on the test split (GET /drift)."""
    from multitag.lifecycle.drift import Reference
    from multitag.serving.drift_watch import as_response, version_drift

    params = load_params(params_path)
    name, serve = params.registry.model_name, params.serve
    champion, meta, log = _logged_champion(params, params_path)
    result = as_response(version_drift(log, name, champion.version, Reference.from_metadata(meta), meta["classes"], serve), serve)
    if as_json:
        out.print_json(data=result.model_dump())
        return
    table = Table(title=f"{name} v{result.model_version}: last {result.predictions} answers vs {result.reference_rows or 0} test images")
    for column in ("class", "live rate", "test rate", "adjusted p", "drifted"):
        table.add_column(column)
    for c in result.classes:
        table.add_row(c.name, rate(c.live_rate), rate(c.reference_rate), f"{c.adjusted_p_value:.2g}", "DRIFT" if c.drifted else "")
    out.print(table)
    style = {"drift": "red", "no_drift": "green"}.get(result.status, "yellow")
    console.print(f"[{style}]{result.status}: {result.message}[/]")


@app.command("retrain")
def retrain(
    now: bool = typer.Option(False, "--now", help="Run the retraining flow here and now instead of triggering the deployment."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Here and now, refit only the champion's cheap member (its probe, else its head) on cached features (minutes), then gate and serve.",
    ),
    params_path: Path = ParamsOption,
) -> None:
    """Retrain from pending feedback: the full nightly-retraining flow, or with --quick the
    quick-retraining flow (corrections served in minutes; the next nightly trains them in full)."""
    if now or quick:
        from flows.nightly_retraining import nightly_retraining, quick_retraining

        out.print_json(data=(quick_retraining if quick else nightly_retraining)(params_path=str(params_path)))
        return
    import os

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError("no Prefect server: run `make prefect-up` and export PREFECT_API_URL, or use `multitag retrain --now`")
    from prefect.deployments import run_deployment

    run = run_deployment("nightly-retraining/nightly-retraining", timeout=0)
    console.print(f"[green]triggered flow run {run.id}[/green]; follow it in the Prefect UI")


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, help="Default: serve.host (127.0.0.1)."),
    port: int | None = typer.Option(None, help="Default: serve.port."),
    params_path: Path = ParamsOption,
) -> None:
    """Serve the champion: API + web page (http://HOST:PORT/)."""
    from multitag.serving.app import serve as run_server

    run_server(host, port, params_path)


@app.command("pipeline")
@exclusive
def pipeline(
    source: Source = typer.Option(..., help="The dataset's format."),
    path: Path | None = typer.Option(None, help=f"Dataset folder (default for synthetic: {Layout().synthetic})."),
    classes: str | None = typer.Option(None, help="A class subset, comma-separated: person,dog,cat."),
    model_name: str | None = typer.Option(None, help="Registered model name; default: one per task (the dataset's folder name)."),
    arch: list[str] = typer.Option([], "--arch", help="Architecture(s); default: the recipe of the data's kind."),
    params_path: Path = ParamsOption,
) -> None:
    """The whole pipeline on this dataset: validate, preprocess, train, evaluate, gate, register.

    The choice is recorded in params.yaml first (as the Prefect flow's parameters are), so
    `dvc status` and `dvc repro` agree with what ran; a run that fails puts params.yaml back as it
    was, so the server and the nightly retraining stay on the task that works. `make demo` is
    `--source synthetic`.
    """
    import os

    # Without PREFECT_API_URL the flow starts a temporary server; on 2 busy cores it can take
    # longer than Prefect's 20 s default to answer, so allow two minutes unless the user chose.
    # Set before Prefect is imported: it reads its settings then.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows.training_pipeline import training_pipeline
    from multitag.params_file import set_for_run
    from multitag.stages import outcome_message

    choice = dataset_choice(load_params(params_path), source, path, classes, model_name, arch)
    with set_for_run(
        params_path, choice, on_restore=lambda p: console.print(f"[yellow]the run failed: {p} is back as it was before it[/]")
    ):
        registration = training_pipeline(params_path=str(params_path))
    out.print((Layout().metrics / "comparison.md").read_text())
    console.print(outcome_message(registration))


def dataset_choice(current, source: Source, path: Path | None, classes: str | None, model_name: str | None, arch: list[str]) -> dict:
    """params.yaml keys for this dataset; the recipe's architectures when the data's kind changes."""
    from multitag.recipes import RECIPES, kind_of

    if path is None and source != "synthetic":
        raise UsageError(f"--path is required for --source {source}")
    choice: dict[str, object] = {
        "data.source": source,
        "data.path": str(path or Layout().synthetic),
        "data.classes": [c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        "registry.model_name": model_name or "auto",
    }
    if arch:
        choice["train.architectures"] = list(arch)
    elif kind_of(current.data.source) != kind_of(source):
        choice["train.architectures"] = RECIPES[kind_of(source)]["train.architectures"]
    return choice


def main() -> None:
    app()


if __name__ == "__main__":
    main()
