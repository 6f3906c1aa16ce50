"""`multitag feedback ...`: the feedback queue of users' corrected labels: stats, list, adopt,
suggest (the review list), import, requeue, reject, drift."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from multitag.config import Params, load_params
from multitag.errors import MissingInputError, UsageError
from multitag.feedback.schema import RequeueState, State

if TYPE_CHECKING:
    from multitag.feedback.predictions import PredictionLog
    from multitag.lifecycle.registry import VersionInfo

from multitag.cli.common import ParamsOption, console, out, queue_of, rate

feedback_app = typer.Typer(help="The feedback queue of users' corrected labels.", no_args_is_help=True)


@feedback_app.command("stats")
def feedback_stats(params_path: Path = ParamsOption) -> None:
    """The task's items per state and pending items per label; how many items are unassigned."""
    queue = queue_of(params_path)
    out.print_json(data={"task": queue.task, **queue.stats(), "unassigned": queue.unassigned_count()})


@feedback_app.command("list")
def feedback_list(
    state: State | None = typer.Option(None, help="Only items in this state."),
    limit: int = typer.Option(50),
    unassigned: bool = typer.Option(False, "--unassigned", help="The items of no task (queued before tasks were recorded)."),
    params_path: Path = ParamsOption,
) -> None:
    """The task's newest items (optionally of one state), or the unassigned ones."""
    queue = queue_of(params_path)
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
    queue = queue_of(params_path)
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
    return champion, meta, PredictionLog(queue_of(params_path).database, params.serve.prediction_log_hours * 3600)


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
    items = review.suggest(log, queue_of(params_path), name, champion.version, dict(zip(meta["classes"], meta["thresholds"])), n, max_age_s)
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
    report = import_dir(queue_of(params_path), directory, min_labels=params.validate_.min_labels)
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
    count = queue_of(params_path).requeue(ids or None, state)
    console.print(f"{count} items back to pending")


@feedback_app.command("reject")
def feedback_reject(
    ids: list[int] = typer.Argument(..., help="Item ids (pending, claimed or held)."),
    reason: str = typer.Option(..., "--reason", help="Why: `feedback list` shows it."),
    params_path: Path = ParamsOption,
) -> None:
    """Reject open items (e.g. held ones a reviewer found wrong) so they never train."""
    count = queue_of(params_path).reject(ids, reason)
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
