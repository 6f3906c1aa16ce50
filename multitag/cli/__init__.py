"""The `multitag` command line: thin Typer commands over the library's stage functions; the
command groups live beside it (data.py, registry.py, feedback.py), what they share in common.py."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from multitag.cli.common import Commands, ParamsOption, console, exclusive, out
from multitag.cli.data import data_app
from multitag.cli.feedback import feedback_app
from multitag.cli.registry import registry_app
from multitag.config import Source, load_params
from multitag.errors import UsageError
from multitag.layout import Layout

__all__ = ["app", "main", "out"]  # `out`: tests widen its console

app = typer.Typer(
    cls=Commands, help="multitag: multi-label image classification pipeline.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(data_app, name="data")
app.add_typer(feedback_app, name="feedback")
app.add_typer(registry_app, name="registry")


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

        record = evaluate_stage(params, run_name=run_name, extra_tags=dict(t.split("=", 1) for t in tag))
        out.print(Layout().comparison.read_text())
        console.print(f"MLflow parent run {record.parent_run_id}")
    else:
        from multitag.stages.evaluate import evaluate_uri

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
    out.print(Layout().gate_report.read_text())
    console.print(f"selected {result.selected}: {'PASSED' if result.passed else 'FAILED'}")


@app.command("register")
@exclusive
def register(params_path: Path = ParamsOption) -> None:
    """Register every candidate and move aliases by the gate's verdict."""
    from multitag.stages import register_stage

    result = register_stage(load_params(params_path))
    from multitag.stages import outcome_message

    console.print(f"registered {result.versions}; verdict {result.verdict}")
    console.print(outcome_message(result))


@app.command("retrain")
def retrain(
    now: bool = typer.Option(False, "--now", help="Run the retraining flow here and now instead of triggering the deployment."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Here and now, refit only the champion's cheap member (its probe, else its head) on cached features (minutes), then gate and serve.",
    ),
    params_path: Path = ParamsOption,
    as_json: bool = typer.Option(False, "--json", help="With --now/--quick: print the run's whole result as JSON instead of its outcome."),
) -> None:
    """Retrain from pending feedback: the full nightly-retraining flow, or with --quick the
    quick-retraining flow (corrections served in minutes; the next nightly trains them in full)."""
    if now or quick:
        from flows.nightly_retraining import nightly_retraining, outcome, quick_retraining

        result = (quick_retraining if quick else nightly_retraining)(params_path=str(params_path))
        if as_json:
            out.print_json(data=result)
        else:
            console.print(outcome(result))
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
    out.print(Layout().comparison.read_text())
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
