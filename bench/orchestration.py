"""Benchmark what Prefect orchestration costs: the training pipeline as the Prefect flow against
the same stage functions called directly, in the same order, on the same data.

- flow: `flows.training_pipeline.training_pipeline()`, in-process, against a Prefect server that
  is already up (started once before any timing, so its 5-25 s start-up is left out);
- direct: the plain functions inside the flow's tasks (`task.fn`: `validate_stage`,
  `preprocess_stage`, `train_in_subprocess`, the same `multitag.cli evaluate` subprocess,
  `gate_stage`, `register_stage`, and the `dvc commit` the flow records data versions with),
  called one after the other with no Prefect machinery.

What the flow adds, and the overhead therefore measures: flow and task run bookkeeping on the
server, content-hash cache keys (hashing data/processed and the code), persisted task results,
log shipping, and the markdown report artefact.

Both variants do the same work. Each attempt runs in a fresh subprocess (so lazy imports such as
great_expectations are paid by both) with a fresh PREFECT_HOME and `PREFECT_TASKS_REFRESH_CACHE`
(no task cache hits), a fresh MLflow database (no champion to score in the gate), and
data/validated, data/processed, models and every other stage output deleted first. The raw
synthetic images are generated once, before any timing. Attempts alternate (direct, flow, flow,
direct, ...) so that a drift in machine load hits both alike; the fastest attempt of each variant
gives the overhead. On a shared machine other load moves wall time by far more than Prefect
costs, so two steadier views come with it: the flow's time outside its task runs (Prefect's
bookkeeping between tasks, measured within each run) and CPU seconds (the attempt's whole
process tree plus the server's). Run from the repo root:

    .venv/bin/python bench/orchestration.py              # 300 images, 32 px, small_cnn 3 epochs, 2 attempts each
    .venv/bin/python bench/orchestration.py --repeat 1   # one attempt each, a faster check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import RESULTS_DIR, ROOT, free_port, machine_info

RESULTS_PATH = RESULTS_DIR / "orchestration.json"
TARGET_OVERHEAD_PERCENT = 15.0
SERVER_START_S = 180
STAGE_OUTPUTS = [
    "data/validated",
    "data/processed",
    "data/frozen_test.json",
    "models",
    "metrics",
    "reports",
    "mlartifacts",
    "dvc.lock",
    ".dvc/cache",
    ".dvc/tmp",
]
PARAMS_PATH = "params.yaml"


# --- the child: one timed variant, run inside the scratch project ----------------------------


def run_direct() -> dict[str, float]:
    """The flow's steps without Prefect: each task's own function (`.fn`), in the flow's order."""
    from multitag.config import load_params
    from tasks import pipeline as t

    steps = [
        ("apply_overrides", lambda: t.apply_overrides.fn(PARAMS_PATH, {})),
        ("synthesize", lambda: t.synthesize.fn(PARAMS_PATH)),
        ("validate", lambda: t.validate.fn(PARAMS_PATH)),
        ("preprocess", lambda: t.preprocess.fn(PARAMS_PATH)),
    ]
    steps += [("train", lambda arch=arch: t.train.fn(arch, PARAMS_PATH)) for arch in load_params(PARAMS_PATH).train.architectures]
    steps += [
        ("evaluate", lambda: t.evaluate.fn(PARAMS_PATH, run_name="training-pipeline")),
        ("gate", lambda: t.gate.fn(PARAMS_PATH)),
        ("register", lambda: t.register.fn(PARAMS_PATH)),
        ("record_data_versions", t.record_data_versions.fn),
    ]
    seconds = {}
    for name, step in steps:
        started = time.perf_counter()
        step()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started  # train: all architectures
    return seconds


def run_flow() -> dict[str, float]:
    """The Prefect flow, in-process, against the already running server in PREFECT_API_URL."""
    from flows.training_pipeline import training_pipeline

    state = training_pipeline(return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"the flow ended {state!r}")
    return task_seconds(str(state.state_details.flow_run_id))


def task_seconds(flow_run_id: str) -> dict[str, float]:
    """Each task run's own run time, as the server recorded it (outside the timed call)."""
    import httpx

    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200, "offset": 0}
    runs = httpx.post(f"{os.environ['PREFECT_API_URL']}/task_runs/filter", json=body, timeout=30).raise_for_status().json()
    seconds: dict[str, float] = {}
    for run in runs:  # names are "<task>-<suffix>"; train runs once per architecture
        name = run["name"].rsplit("-", 1)[0]
        seconds[name] = seconds.get(name, 0.0) + run["total_run_time"]
    return seconds


def child_main(variant: str, result_path: Path) -> None:
    """Import everything first (untimed), then time one whole pipeline run."""
    sys.path.insert(0, os.getcwd())  # the scratch project's code, not the installed checkout's
    import flows.training_pipeline  # noqa: F401  (imports prefect, multitag and the tasks)
    from multitag.layout import Layout
    from multitag.lifecycle.registration import Registration

    started = time.perf_counter()
    steps = run_direct() if variant == "direct" else run_flow()
    seconds = time.perf_counter() - started
    registration = Registration.read(Layout().registration)
    result_path.write_text(
        json.dumps(
            {
                "variant": variant,
                "seconds": seconds,
                "steps": steps,
                "verdict": registration.verdict,
                "champion_version": registration.champion_version,
            }
        )
    )


# --- the parent: scratch project, server, alternating attempts, report ------------------------


def scratch_project(root: Path, images: int, size: int, epochs: int) -> Path:
    """A throwaway copy of the project (tests/project.py: own git and DVC) with the benchmark's params."""
    sys.path.insert(0, str(ROOT / "tests"))
    from project import make_project

    overrides = {
        "data.synthetic": {"n_images": images, "image_size": size, "seed": 0},
        "preprocess.image_size": size,
        "train.architectures": ["small_cnn"],
        "train.small_cnn_epochs": epochs,
        "evaluate.latency_runs": 20,
    }
    project = make_project(root / "project", overrides)
    from multitag.config import load_params
    from multitag.data.sources import synthetic

    settings = load_params(project / PARAMS_PATH).data.synthetic
    synthetic.generate(project / "data" / "raw" / "synthetic", settings.n_images, settings.image_size, settings.seed)
    return project


def start_server(scratch: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free loopback port, its own PREFECT_HOME; returns when healthy."""
    import httpx

    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(scratch / "server-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    port = api_url.rsplit(":", 1)[1].split("/")[0]
    with open(scratch / "server.log", "w") as log:  # the server keeps its own copy of the handle
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).json() is True:
                return server, api_url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    stop_server(server)
    sys.exit(f"the Prefect server did not become healthy; see {scratch / 'server.log'}")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server this script started (its own session: the group id is its PID)."""
    import signal

    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def reset_outputs(project: Path) -> None:
    """Delete every stage output, so the next attempt does the whole pipeline's work again."""
    for relative in STAGE_OUTPUTS:
        path = project / relative
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (the server's own work)."""
    import psutil

    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def measure(variant: str, index: int, project: Path, scratch: Path, server: subprocess.Popen, api_url: str) -> dict:
    """One attempt in a fresh subprocess, with fresh Prefect, MLflow and stage state.

    Besides wall time, CPU seconds: the attempt's whole process tree (training and evaluation
    subprocesses included) plus what the server spent meanwhile. Other load on the machine
    stretches wall time but hardly CPU time, so CPU shows the flow's extra work more steadily.
    """
    reset_outputs(project)
    attempt = scratch / f"{index}-{variant}"
    attempt.mkdir()
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(attempt / "prefect-home"),
        "PREFECT_TASKS_REFRESH_CACHE": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{attempt / 'mlflow.db'}",
        "MULTITAG_REGISTRY_LOCK": str(attempt / "registry.lock"),
        "KERAS_HOME": str(scratch / "keras"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    print(f"  {variant:6s} ...", end="", flush=True)
    load = os.getloadavg()[0]
    children_before, server_before = resource.getrusage(resource.RUSAGE_CHILDREN), tree_cpu_seconds(server.pid)
    with open(attempt / "output.log", "w") as output:
        code = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--result", str(attempt / "result.json")],
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if code != 0:
        sys.exit(f"\nthe {variant} attempt failed (exit {code}); see {attempt / 'output.log'}")
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads((attempt / "result.json").read_text())
    result["cpu_seconds"] = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    result["server_cpu_seconds"] = tree_cpu_seconds(server.pid) - server_before
    result["load_avg_1min_before"] = load
    print(
        f" {result['seconds']:6.1f} s wall, {result['cpu_seconds']:6.1f} + {result['server_cpu_seconds']:4.1f} s CPU "
        f"(attempt + server; gate {result['verdict']}; load {load:.1f})"
    )
    return result


def summarise(attempts: list[dict], args: argparse.Namespace) -> dict:
    """Fastest and mean time per variant, the overhead of the flow over direct calls."""
    times = {v: [a["seconds"] for a in attempts if a["variant"] == v] for v in ("direct", "flow")}
    fastest = {v: min(t) for v, t in times.items()}
    overhead = 100 * (fastest["flow"] - fastest["direct"]) / fastest["direct"]
    mean_overhead = 100 * (statistics.mean(times["flow"]) - statistics.mean(times["direct"])) / statistics.mean(times["direct"])
    # Within each flow run, the time outside its task runs: Prefect's own work between tasks, immune
    # to load drifting between attempts (the tasks' bodies are the direct variant's calls).
    between_tasks = [a["seconds"] - sum(a["steps"].values()) for a in attempts if a["variant"] == "flow"]
    in_tasks = [sum(a["steps"].values()) for a in attempts if a["variant"] == "flow"]
    cpu = {
        v: statistics.mean(a["cpu_seconds"] + a["server_cpu_seconds"] for a in attempts if a["variant"] == v) for v in ("direct", "flow")
    }
    fastest_steps = {v: min((a for a in attempts if a["variant"] == v), key=lambda a: a["seconds"])["steps"] for v in ("direct", "flow")}
    return {
        "setup": {
            "images": args.images,
            "image_size": args.size,
            "architecture": "small_cnn",
            "epochs": args.epochs,
            "attempts_each": args.repeat,
        },
        "machine": {**machine_info(), "load_avg_1min_at_start": args.load_at_start},
        "direct_seconds": fastest["direct"],
        "flow_seconds": fastest["flow"],
        "overhead_percent": overhead,
        "overhead_percent_of_means": mean_overhead,
        "direct_cpu_seconds_mean": cpu["direct"],
        "flow_cpu_seconds_mean": cpu["flow"],
        "cpu_overhead_percent": 100 * (cpu["flow"] - cpu["direct"]) / cpu["direct"],
        "target_overhead_percent": TARGET_OVERHEAD_PERCENT,
        "meets_target": overhead <= TARGET_OVERHEAD_PERCENT,
        "flow_seconds_outside_task_runs_mean": statistics.mean(between_tasks),
        "flow_outside_task_runs_percent": 100 * sum(between_tasks) / sum(in_tasks),
        "step_seconds_fastest_attempts": fastest_steps,  # direct: timed around each call; flow: task run times from the server
        "attempts": attempts,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="synthetic images (default 300)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--epochs", type=int, default=3, help="small_cnn epochs (default 3)")
    parser.add_argument("--repeat", type=int, default=2, help="attempts per variant, alternating (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help=f"results JSON (default {RESULTS_PATH.relative_to(ROOT)})")
    parser.add_argument("--child", choices=("direct", "flow"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args.child, args.result)
        return
    args.load_at_start = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="multitag-bench-orchestration-"))  # kept when an attempt fails, for its logs
    print(f"scratch project in {scratch}: {args.images} synthetic images, {args.size} px, small_cnn {args.epochs} epochs")
    project = scratch_project(scratch, args.images, args.size, args.epochs)
    server, api_url = start_server(scratch)
    print(f"Prefect server up at {api_url} (start-up not timed)")
    try:
        attempts = []
        for round_ in range(args.repeat):
            order = ("direct", "flow") if round_ % 2 == 0 else ("flow", "direct")
            attempts += [measure(variant, len(attempts), project, scratch, server, api_url) for variant in order]
    finally:
        stop_server(server)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = summarise(attempts, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"direct:   {summary['direct_seconds']:.1f} s (fastest of {args.repeat})")
    print(f"flow:     {summary['flow_seconds']:.1f} s (fastest of {args.repeat})")
    print(
        f"overhead: {summary['overhead_percent']:.1f}% (target <= {TARGET_OVERHEAD_PERCENT:.0f}%; "
        f"{summary['overhead_percent_of_means']:.1f}% on the means)"
    )
    print(
        f"flow time outside its task runs: {summary['flow_seconds_outside_task_runs_mean']:.1f} s a run "
        f"({summary['flow_outside_task_runs_percent']:.1f}% of the time in tasks)"
    )
    print(
        f"CPU:      direct {summary['direct_cpu_seconds_mean']:.1f} s, flow {summary['flow_cpu_seconds_mean']:.1f} s "
        f"(means, server included): {summary['cpu_overhead_percent']:+.1f}%"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
