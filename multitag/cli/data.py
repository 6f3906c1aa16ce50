"""`multitag data ...`: download, synthesize, validate, preprocess and describe datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from multitag.config import load_params
from multitag.errors import MissingInputError
from multitag.layout import Layout

if TYPE_CHECKING:
    pass

from multitag.cli.common import ParamsOption, console, exclusive, out

data_app = typer.Typer(help="Download, validate, preprocess and describe datasets.", no_args_is_help=True)


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
    console.print(f"[green]Wrote {summary.splits} images at {summary.image_size}px[/green] to {Layout().processed}")


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
