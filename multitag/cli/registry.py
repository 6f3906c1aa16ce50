"""`multitag registry ...`: inspect the registry and move its aliases (promote, rollback), and the
challenger's shadow report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from multitag.config import Params, load_params
from multitag.errors import UsageError

if TYPE_CHECKING:
    pass

from multitag.cli.common import ParamsOption, console, out, queue_of, rate

registry_app = typer.Typer(help="Inspect and move the model registry's aliases.", no_args_is_help=True)


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
        guard_promotion(params, queue_of(params_path), version)
    serving_checks_for(name, version, params)
    former = registry.promote(name, version)
    console.print(f"[green]champion is now version {version}[/green]" + (f" (previous-champion: {former.version})" if former else ""))


def serving_checks_for(name: str, version: str, params: Params) -> None:
    """A version the gate refused on its scores was neither exported nor smoke-tested (it was not to
    serve): run those checks now, before it serves, and refuse when the smoke test fails."""
    from multitag.lifecycle import gate, registry

    info = next((v for v in registry.list_versions(name) if v.version == str(version)), None)
    if info is None or not gate.refused_unchecked(info.tags):
        return  # no such version (promote says so), or nothing the gate left unchecked
    console.print(f"version {version} was refused by the gate and never exported: exporting and smoke-testing it first ...")
    champion = registry.alias_version(name, registry.CHAMPION)
    champion_uri = f"models:/{name}/{champion.version}" if champion else None
    if reasons := gate.prepare_to_serve(registry.run_uri(info), champion_uri, params.gate):
        raise UsageError(f"not promoting version {version}: {'; '.join(reasons)}")


@registry_app.command("shadow-report")
def registry_shadow_report(
    limit: int = typer.Option(10_000, help="Read the newest LIMIT images the challenger scored."), params_path: Path = ParamsOption
) -> None:
    """How the challenger, scoring live traffic in shadow mode, answered compared with the champion, per class."""
    from multitag.feedback.shadow import challenger_report
    from multitag.lifecycle.policy import requires_shadow, shadow_refusals

    params = load_params(params_path)
    report = challenger_report(params, queue_of(params_path), limit)
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
    elif reasons := shadow_refusals(report, params.gate):
        console.print(f"[yellow]the gate would refuse to promote it: {'; '.join(reasons)}[/yellow]")
    else:
        console.print("[green]the gate's shadow settings allow promoting it[/green]")


@registry_app.command("rollback")
def registry_rollback(params_path: Path = ParamsOption) -> None:
    """Move champion back to previous-champion in one step."""
    from multitag.lifecycle import registry

    old, new = registry.rollback(load_params(params_path).registry.model_name)
    console.print(f"[green]rolled back: champion {old} -> {new}[/green]")
