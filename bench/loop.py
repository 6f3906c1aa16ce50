"""Proof of the learning loop on real photos (issue 21, part 6): do users' corrections, a night at
a time through the real retraining flows, bring a champion to what training on everything gives?

voc-real's 1,522 photos (../shared/datasets/voc-real); scripts/voc_pool.py draws, seeded, a pool
(the photos users correct) and an unseen set (never corrected, never trained on: where every model
is compared) out of them. Then, each in its own throwaway project (tests/project.py: own git, DVC,
MLflow, queue and Prefect home) and its own child process:

- base: the training pipeline (flows/training_pipeline.py, the photo recipe, params.yaml's settings)
  on the rest: the champion every loop starts from;
- ceiling: the same pipeline from scratch on everything but the unseen set, the pool's true labels
  included: what the corrections could reach;
- one loop per order, in a copy of the base project: each night users correct the next
  pool/nights photos with their true labels (bench/feedback_screen.py's stream: 40 clients, 15%
  corrected twice) into the feedback queue, then the real flow runs in-process under a Prefect test
  server (`nightly_retraining`, `quick_retraining` or both: `--kind`). Orders: `review`, the review
  list (multitag/feedback/review.py) over the current champion's answers on the photos not yet
  corrected, re-ranked every night; `random`, a seeded shuffle; `arrival`, the pool's id order
  (VOC ids are dates: the order the photos came in);
- `--corrupt 0.2`: the random order twice more with that share of its corrections corrupted as in
  bench/feedback_screen.py (slips and a flooding client), the screen on and off.

After each flow: the gate's verdict and its gain's bootstrap interval; the champion's test mAP and
macro-F1 on that night's frozen test split as the gate measured them (the split grows with
corrections, so neither nights nor orders compare there); the flow's wall time; and the champion,
as served, on the unseen photos: mAP, macro-F1 and per-class AP, the fair curve; and the night's
retrained candidate on the same photos, promoted or not (what the labels bought, apart from the
gate's verdict: the review-order target is judged on both curves). Every setting is fixed before
the run: nothing is chosen on test or unseen photos.

    .venv/bin/python bench/loop.py --smoke                        # plumbing check: 160 photos, one quick night, ~12 min
    nice -n 10 .venv/bin/python bench/loop.py --kind quick        # three orders, the quick path
    nice -n 10 .venv/bin/python bench/loop.py --kind full --corrupt 0.2
    nice -n 10 .venv/bin/python bench/loop.py --kind quick --orders random --corrupt 0.2 --nights 1 --no-ceiling --seed 3 --out ...
    .venv/bin/python bench/loop.py --summary bench/results/loop-corrupt-*.json   # the corruption cost over several draws

Results: bench/results/loop.json (every number), loop.png (the curves); bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from harness import RESULTS_DIR, ROOT, VOC_DIR, WEIGHTS_224, WEIGHTS_DIR, child_command, machine_info, require_shared_data

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]
from feedback_screen import corrections, load_photos  # noqa: E402
from project import TINY, make_project, project_env  # noqa: E402
from voc_pool import held_out, write_subset  # noqa: E402

ORDERS = ("review", "random", "arrival")
KINDS = {"quick": ["quick"], "full": ["full"], "both": ["quick", "full"]}
DATA_DIR = "data/raw/voc-loop"  # inside each project, relative: a copied project keeps its data and frozen test split
PARAMS = "params.yaml"
SCORE_BATCH = 32
LOG_TAIL = 60
WEIGHT_SIZES = (96, 128, 160, 192, 224)  # the input sizes Keras has MobileNetV2 ImageNet weights for
CEILING_MARGIN = 0.01  # targets (issue 21): the loop within 0.01 mAP of the ceiling ...
REVIEW_LABEL_SHARE = 0.7  # ... the review order at random's final mAP with at most 70% of its labels ...
SCREEN_COST_SHARE = 0.5  # ... and corruption costing under half as much with the screen on


@dataclass(frozen=True)
class Scale:
    photos: int | None  # voc-real photos used (None: all)
    pool: int
    unseen: int
    nights: int
    kind: str
    orders: tuple[str, ...]
    params: dict  # params.yaml keys on top of the project's own


FULL = Scale(None, 500, 300, 5, "full", ORDERS, {})
SMOKE = Scale(
    160,
    40,
    40,
    1,  # a flow costs minutes even this small (TFLite export, smoke test, TF start-ups): `--nights 2` to see a re-ranking
    "quick",
    ("review", "random"),  # arrival runs the same code as random
    {  # the photo recipe made tiny, one network, one view: the plumbing, not the numbers
        "preprocess.image_size": 96,
        "train.flip_average": False,
        "train.probe_ensemble": False,
        "train.head_epochs": 2,
        "train.fine_tune_epochs": 1,
        "train.batch_size": 16,
        "evaluate.latency_runs": 3,
        "gate.baselines": ["class_prior"],
        "gate.min_improvement": -1.0,  # promote every candidate, so the review list re-ranks with new champions
        "gate.max_class_regression": 1.0,
        "retrain.min_feedback": 3,
    },
)


@dataclass(frozen=True)
class Run:
    name: str
    order: str
    corrupt: float
    screen: bool


# --- the children: one pipeline or one loop, inside its project ------------------------------------


@dataclass(frozen=True)
class Photo:
    id: str
    path: str
    labels: tuple[str, ...]


class Served:
    """A task's registered versions as users get them (the served runtime), scoring photos."""

    def __init__(self, name: str):
        self.name, self.version, self.predictor = name, None, None
        self._pixels: dict[tuple[str, int], np.ndarray] = {}

    def load(self, version: str):
        from multitag.lifecycle.predictor import Predictor

        if version != self.version:
            self.predictor, self.version = Predictor.from_uri(f"models:/{self.name}/{version}"), version
        return self.predictor

    def scores(self, version: str, photos: list[Photo]) -> np.ndarray:
        """(N, C) probabilities in the predictor's class order; decoded pixels are kept per input size."""
        predictor = self.load(version)
        for photo in photos:
            key = (photo.path, predictor.input_size)
            if key not in self._pixels:
                self._pixels[key] = predictor.decode(Path(photo.path).read_bytes())
        x = np.stack([self._pixels[(photo.path, predictor.input_size)] for photo in photos])
        return np.concatenate([predictor.predict_arrays(x[i : i + SCORE_BATCH]) for i in range(0, len(x), SCORE_BATCH)])

    def metrics(self, version: str, photos: list[Photo]) -> dict:
        """mAP and macro-F1 of the served answers (the version's own thresholds), per-class AP."""
        from multitag.modeling.metrics import compute_metrics

        scores = self.scores(version, photos)
        predictor = self.predictor
        y = np.array([[c in photo.labels for c in predictor.classes] for photo in photos])
        result = compute_metrics(y, scores, predictor.thresholds, predictor.classes)
        return {
            "version": version,
            "runtime": predictor.info.get("runtime"),
            "mAP": result["mAP"],
            "macro_f1": result["macro_f1"],
            "micro_f1": result["micro_f1"],
            "ap": {name: row["ap"] for name, row in result["per_class"].items()},
        }


def gate_summary() -> dict:
    """reports/gate.json in a few numbers: the verdict, the test split, both models on it, the gain's interval."""
    from multitag.layout import Layout
    from multitag.lifecycle.gate_record import GateRecord

    verdict = GateRecord.read(Layout().gate_record).verdict
    return {
        "passed": verdict["passed"],
        "reasons": verdict["reasons"],
        "candidate_test": verdict["candidate"],
        "champion_test": verdict.get("champion"),
        "test_photos": verdict.get("test_images"),
        "test_from_corrections": verdict.get("test_from_corrections"),
        "gain_interval": verdict.get("gain_interval"),  # null where the gate reports none
    }


def headline(test: dict | None) -> dict | None:
    return None if test is None else {k: test.get(k) for k in ("mAP", "macro_f1")}


def pipeline_child(config: dict) -> dict:
    """The training pipeline flow on the project's data, then its model on the unseen photos.
    The base run needs a champion to start the loop: a candidate the gate refused is promoted, and the record says so."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.training_pipeline import training_pipeline
    from multitag.config import load_params
    from multitag.lifecycle import registry

    name = load_params(PARAMS).registry.model_name
    with prefect_test_harness(server_startup_timeout=180):
        started = time.perf_counter()
        registration = training_pipeline()
        wall = time.perf_counter() - started
    version = registration.selected_version
    promoted_by_bench = config["needs_champion"] and registration.champion_version != version
    if promoted_by_bench:
        registry.promote(name, version)
    gate = gate_summary()
    unseen = Served(name).metrics(version, [Photo(**p) for p in config["unseen"]])
    print(
        f"loop: {config['label']}: version {version}, gate {registration.verdict}, unseen mAP {unseen['mAP']:.4f}, {wall:.0f} s",
        flush=True,
    )
    return {
        "model_name": name,
        "version": version,
        "verdict": registration.verdict,
        "reasons": registration.reasons,
        "promoted_by_bench": promoted_by_bench,
        "wall_s": wall,
        "test_photos": gate["test_photos"],
        "test": headline(gate["candidate_test"]),
        "unseen": unseen,
    }


def review_order(served: Served, version: str, remaining: list[Photo], n: int) -> list[int]:
    """Positions in `remaining` of the `n` photos the review list asks about first, ranked on the
    champion's answers (as GET /review does, without a challenger); when the diversity rule leaves
    fewer than `n`, the next ones in rank order fill up."""
    from multitag.feedback.predictions import LoggedPrediction
    from multitag.feedback.review import Candidate, rank, review_list

    scores = served.scores(version, remaining)
    predictor = served.predictor
    thresholds = dict(zip(predictor.classes, map(float, predictor.thresholds)))
    shas = [hashlib.sha256(Path(photo.path).read_bytes()).hexdigest() for photo in remaining]
    candidates = [
        Candidate(
            LoggedPrediction(
                i,
                sha,
                served.name,
                version,
                tuple(c for c, s, t in zip(predictor.classes, row, predictor.thresholds) if s >= t),
                dict(zip(predictor.classes, map(float, row))),
                0.0,
            )
        )
        for i, (sha, row) in enumerate(zip(shas, scores))
    ]
    picked = [item.image_sha256 for item in review_list(candidates, thresholds, n)]
    picked += [item.image_sha256 for item in rank(candidates, thresholds) if item.image_sha256 not in set(picked)][: n - len(picked)]
    return [shas.index(sha) for sha in picked]


def wrong_classes(served: Served, version: str, photos: list[Photo]) -> dict[str, int]:
    """Per class, on how many of `photos` the champion's served answer was wrong: what the corrections correct."""
    scores = served.scores(version, photos)
    predictor = served.predictor
    wrong = Counter(
        c
        for photo, row in zip(photos, scores)
        for c, s, t in zip(predictor.classes, row, predictor.thresholds)
        if (s >= t) != (c in photo.labels)
    )
    return dict(wrong.most_common())


def loop_child(config: dict) -> dict:
    """Night after night: users correct the next photos of the order, then the flow(s) run; the record of each flow."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.nightly_retraining import nightly_retraining, quick_retraining
    from multitag.config import load_params
    from multitag.feedback.retraining import open_queue
    from multitag.lifecycle import registry

    flows = {"quick": quick_retraining, "full": nightly_retraining}
    params = load_params(PARAMS)
    name = params.registry.model_name
    queue = open_queue(params)
    classes, pool, unseen = config["classes"], [Photo(**p) for p in config["pool"]], [Photo(**p) for p in config["unseen"]]
    y_pool = np.array([[c in photo.labels for c in classes] for photo in pool])
    served = Served(name)
    base = config["base"]
    rows = [{"night": 0, "kind": "base", "photos_corrected": 0, "corrections_sent": 0, "items_trained": 0, "wall_s": base["wall_s"]}]
    rows[0].update(champion_version=base["version"], test=base["test"], test_photos=base["test_photos"], unseen=base["unseen"])
    rows[0].update(candidate_version=base["version"], candidate_unseen=base["unseen"])
    corrected: list[int] = []
    kinds_by_item: dict[int, list[str]] = {}
    sent = trained = 0
    with prefect_test_harness(server_startup_timeout=180):
        for night in range(1, config["nights"] + 1):
            version = registry.alias_version(name, registry.CHAMPION).version
            done = set(corrected)
            remaining = [i for i in config["order_ids"] if i not in done]
            n = min(config["night_size"], len(remaining))
            if config["order"] == "review":
                chosen = [remaining[k] for k in review_order(served, version, [pool[i] for i in remaining], n)]
            else:
                chosen = remaining[:n]
            wrong = wrong_classes(served, version, [pool[i] for i in chosen])
            stream = corrections(np.array(chosen), y_pool, classes, np.random.default_rng([config["seed"], night]), config["corrupt"])
            for photo, labels, client, kind in zip(stream.photos, stream.labels, stream.clients, stream.kinds):
                added = queue.add(Path(pool[photo].path).read_bytes(), sorted(labels), model_version=version, client=client)
                kinds_by_item.setdefault(added.id, []).append(kind)
            corrected += chosen
            sent += len(stream.photos)
            for kind in config["kinds"]:
                started = time.perf_counter()
                try:
                    result, error = flows[kind](), None
                except Exception as err:  # recorded and reported; the loop goes on, as the next night would
                    result, error = {"status": "failed"}, f"{type(err).__name__}: {err}"[:800]
                wall = time.perf_counter() - started
                retrained = result["status"] == "retrained"
                gate = gate_summary() if retrained else None
                trained += len(result.get("feedback_ids", []))
                held = result.get("held", {})
                champion = registry.alias_version(name, registry.CHAMPION).version
                previous = rows[-1]
                row = {
                    "night": night,
                    "kind": kind,
                    "photos_corrected": len(corrected),
                    "corrections_sent": sent,
                    "items_trained": trained,
                    "sent_kinds": dict(Counter(stream.kinds)),
                    "wrong_classes": wrong,
                    "status": result["status"],
                    "error": error,
                    "wall_s": wall,
                    "verdict": ("passed" if gate["passed"] else "failed") if gate else None,
                    "gate_reasons": gate["reasons"] if gate else None,
                    "gain_interval": gate["gain_interval"] if gate else None,
                    "test_photos": gate["test_photos"] if gate else previous["test_photos"],
                    "test_from_corrections": gate["test_from_corrections"] if gate else previous.get("test_from_corrections"),
                    "test": headline(gate["candidate_test" if gate["passed"] else "champion_test"]) if gate else previous["test"],
                    "held": len(held),
                    "held_corrupted": sum(any(k != "clean" for k in kinds_by_item.get(int(i), [])) for i in held),
                    "champion_version": champion,
                    "unseen": previous["unseen"] if champion == previous["champion_version"] else served.metrics(champion, unseen),
                }
                # what the night's labels bought, whether or not the gate let it serve
                candidate = result.get("selected_version") if retrained else None
                row["candidate_version"] = candidate
                row["candidate_unseen"] = (
                    (row["unseen"] if candidate == champion else served.metrics(candidate, unseen)) if candidate else None
                )
                rows.append(row)
                print(f"loop: {config['label']}: night {night} {kind}: {describe_row(row)}", flush=True)
                Path(config["result"]).write_text(json.dumps({"rows": rows}, indent=1, default=float))  # a crash keeps the nights done
    return {"rows": rows}


def describe_row(row: dict) -> str:
    interval = row.get("gain_interval")
    gain = f" [{interval['low']:+.3f}, {interval['high']:+.3f}]" if interval else ""
    outcome = row["error"] or f"{row['status']}, gate {row['verdict']}{gain}"
    return (
        f"{row['photos_corrected']} photos corrected, {outcome}, champion v{row['champion_version']}, "
        f"unseen mAP {row['unseen']['mAP']:.4f}, {row['wall_s']:.0f} s"
    )


def child_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.getcwd())  # the project's copy of the code, as the flows see it
    config = json.loads(Path(args.config).read_text())
    result = pipeline_child(config) if args.child == "pipeline" else loop_child(config)
    Path(config["result"]).write_text(json.dumps(result, indent=1, default=float))


# --- the parent: data, projects, children, report ----------------------------------------------------


def project_params(scale: Scale) -> dict:
    """params.yaml as it ships (tests/project.py's tiny values put back), on the VOC folder, with
    the photo recipe's architecture (the list `multitag pipeline --source voc` records), and the scale's keys on top."""
    import yaml

    from multitag.recipes import PHOTOS, RECIPES

    shipped = yaml.safe_load((ROOT / PARAMS).read_text())
    restored = {dotted: shipped[dotted.split(".")[0]][dotted.split(".", 1)[1]] for dotted in TINY}
    data = {"data.source": "voc", "data.path": DATA_DIR, "train.architectures": RECIPES[PHOTOS]["train.architectures"]}
    return {**restored, **data, **scale.params}


def scratch_project(root: Path, dropped: set[str], params: dict) -> Path:
    """A throwaway project on voc-real without the `dropped` photos, with ImageNet weights at every size."""
    project = make_project(root, params)
    write_subset(VOC_DIR, project / DATA_DIR, dropped)
    models = Path(project_env(project)["KERAS_HOME"]) / "models"
    for size in WEIGHT_SIZES:
        link = models / WEIGHTS_224.replace("_224_", f"_{size}_")
        if not link.exists():
            link.symlink_to(WEIGHTS_DIR / WEIGHTS_224)
    return project


def copy_project(source: Path, target: Path) -> Path:
    """An independent copy of a project that has run. MLflow stores absolute artefact locations:
    they are rewritten to the copy's, so its runs and registry never touch the original."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(".prefect", "*.log"))
    old, new = str(source.resolve()), str(target.resolve())
    with sqlite3.connect(target / "mlflow.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(kind in column[2].upper() for kind in ("CHAR", "TEXT", "CLOB")):
                    db.execute(
                        f'UPDATE "{table}" SET "{column[1]}" = REPLACE("{column[1]}", ?, ?) WHERE instr("{column[1]}", ?) > 0',
                        (old, new, old),
                    )
    return target


def run_child(kind: str, project: Path, config: dict, work: Path) -> dict:
    """One child in `project`: its output goes to a log file, its "loop:" lines to the console too."""
    label = config["label"]
    config_path, result_path, log_path = (work / f"{label}.{suffix}" for suffix in ("config.json", "result.json", "log"))
    config["result"] = str(result_path)
    config_path.write_text(json.dumps(config))
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MULTITAG_", "PREFECT_"))}
    env = {**inherited, **project_env(project), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    command = child_command(__file__, kind, "--config", str(config_path))
    with log_path.open("w") as log:
        child = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in child.stdout:
            log.write(line)
            if line.startswith("loop: "):
                print(f"  {line[6:]}", end="", flush=True)
        code = child.wait()
    if code != 0:
        tail = log_path.read_text().splitlines()[-LOG_TAIL:]
        sys.exit("\n".join([*tail, f"the {label} child failed (exit {code}); its log: {log_path} (kept with --work)"]))
    return json.loads(result_path.read_text())


def draw(args: argparse.Namespace, scale: Scale) -> tuple[list[str], list[str], set[str]]:
    """The pool, the unseen set and the photos outside this run (the smoke scale uses a sample), as voc_pool draws them."""
    listed = (VOC_DIR / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    used = listed if scale.photos is None else random.Random(args.seed).sample(sorted(listed), scale.photos)
    pool, unseen = held_out(used, args.pool, args.unseen, args.seed)
    return pool, unseen, set(listed) - set(used)


def planned_runs(args: argparse.Namespace) -> list[Run]:
    runs = [Run(order, order, 0.0, True) for order in args.orders]
    if args.corrupt:
        if "random" not in args.orders:
            runs.append(Run("random", "random", 0.0, True))  # the clean baseline the corrupted runs lose against
        runs += [Run(f"random-corrupt-{tag}", "random", args.corrupt, screen) for tag, screen in (("screen", True), ("no-screen", False))]
    return runs


def run_order(run: Run, pool: list[str], seed: int) -> list[int]:
    """Positions in the pool, in the order photos reach users (review: re-ranked each night in the child)."""
    if run.order == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(len(pool))]
    return list(range(len(pool)))  # arrival: the pool's id order; review: a placeholder, ranked per night


def photos_of(ids: list[str], by_id: dict[str, Photo]) -> list[dict]:
    return [asdict(by_id[i]) for i in ids]


# --- the report ------------------------------------------------------------------------------------------


def last(run: dict) -> dict:
    return run["rows"][-1]


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's three targets, each with its numbers and whether it is met (None: not measured)."""
    runs = report["runs"]
    clean = {name: run for name, run in runs.items() if not run["corrupt"]}
    targets = []
    ceiling = report["ceiling"]["unseen"]["mAP"] if report["ceiling"] else None
    for name, run in clean.items() if ceiling is not None else ():
        final = last(run)["unseen"]["mAP"]
        targets.append(
            {
                "target": f"{name}: after the whole pool, within {CEILING_MARGIN} unseen mAP of the ceiling",
                "value": f"{final:.4f} vs ceiling {ceiling:.4f} ({final - ceiling:+.4f})",
                "met": final >= ceiling - CEILING_MARGIN,
            }
        )
    if {"review", "random"} <= clean.keys():
        targets.append(label_efficiency(clean, report["base"]["unseen"]["mAP"], served_map, "unseen mAP as served"))
        targets.append(
            label_efficiency(clean, report["base"]["unseen"]["mAP"], candidate_map, "unseen mAP of each night's candidate, the gate aside")
        )
    costs = corruption_costs(report)
    share = next((run["corrupt"] for run in runs.values() if run["corrupt"]), 0.0)
    for what, cost in costs.items():
        targets.append(
            {
                "target": f"{share:.0%} corrupted corrections cost under {SCREEN_COST_SHARE:.0%} of the {what} with the screen on as with it off",
                "value": f"cost with screen {cost[True]:+.4f}, without {cost[False]:+.4f} (against the clean random run)",
                "met": None if cost[False] <= 0 else cost[True] < SCREEN_COST_SHARE * cost[False],
            }
        )
    return targets


def corruption_costs(report: dict) -> dict[str, dict[bool, float]]:
    """What the corrupted corrections cost after the whole pool, screen on (True) and off (False):
    the clean random run's final value minus the corrupted run's, on both curves ({} without --corrupt).
    The candidate curve is the one that sees the labels: the served one also carries the gate's
    noise-level verdicts."""
    runs = report["runs"]
    corrupt = {run["screen"]: run for run in runs.values() if run["corrupt"]}
    if not corrupt or "random" not in runs:
        return {}
    clean = last(runs["random"])
    return {
        what: {screen: curve(clean) - curve(last(run)) for screen, run in corrupt.items()}
        for what, curve in (("unseen mAP as served", served_map), ("unseen mAP of the final candidate", candidate_map))
    }


def summarize(paths: list[Path]) -> None:
    """The corruption costs of several saved draws side by side, and their mean: one draw's cost is
    within the unseen set's noise, the paired difference over draws is what can show one."""
    table = {path: corruption_costs(json.loads(path.read_text())) for path in paths}
    for what in dict.fromkeys(what for costs in table.values() for what in costs):  # the curves, in corruption_costs' order
        rows = [(path, costs[what]) for path, costs in table.items() if what in costs]
        print(f"corruption cost, {what}:")
        for path, cost in rows:
            print(f"  {path.name:32s} screen on {cost[True]:+.4f}   screen off {cost[False]:+.4f}")
        on, off = (np.array([cost[screen] for _, cost in rows]) for screen in (True, False))
        spread = (lambda v: f" (sd {v.std(ddof=1):.4f})") if len(rows) > 1 else (lambda v: "")
        print(
            f"  {'mean of ' + str(len(rows)) + ' draws':32s} screen on {on.mean():+.4f}{spread(on)}   screen off {off.mean():+.4f}{spread(off)}"
        )
        verdict = (
            "NOT MEASURABLE (no cost without the screen)"
            if off.mean() <= 0
            else ("MET" if on.mean() < SCREEN_COST_SHARE * off.mean() else "NOT MET")
        )
        print(f"  target (screen on under {SCREEN_COST_SHARE:.0%} of screen off, on the means): {verdict}")


def served_map(row: dict) -> float:
    """Unseen mAP of the champion after the night: what users got."""
    return row["unseen"]["mAP"]


def candidate_map(row: dict) -> float:
    """Unseen mAP of the night's retrained candidate, promoted or not: what the labels bought, free of
    the gate's verdict on a test split whose interval is about +-0.03 (a night without a candidate
    counts as its champion)."""
    return (row.get("candidate_unseen") or row["unseen"])["mAP"]


def label_efficiency(clean: dict, start: float, curve, what: str) -> dict:
    """The review order's target on one curve: does it reach random's final value with at most
    REVIEW_LABEL_SHARE of random's labels (read at night boundaries)?"""
    goal, labels = curve(last(clean["random"])), last(clean["random"])["photos_corrected"]
    reached = next((row for row in clean["review"]["rows"] if curve(row) >= goal), None)
    if goal <= start:  # random's labels bought nothing: there is no gain to reach sooner
        value, met = f"random's labels did not raise it over the base champion's {start:.4f}", None
    elif reached is None:
        value, met = "never reached", False
    else:
        share = reached["photos_corrected"] / labels
        value, met = f"reached after {reached['photos_corrected']} labels ({share:.0%})", share <= REVIEW_LABEL_SHARE
    return {
        "target": f"review order reaches random's final {what} ({goal:.4f}) with at most {REVIEW_LABEL_SHARE:.0%} of its {labels} labels",
        "value": value,
        "met": met,
    }


def print_report(report: dict) -> None:
    base, ceiling = report["base"], report["ceiling"]
    print(f"\nbase champion: unseen mAP {base['unseen']['mAP']:.4f}, macro-F1 {base['unseen']['macro_f1']:.4f} ({base['wall_s']:.0f} s)")
    if ceiling:
        print(
            f"ceiling (pipeline on everything but the unseen photos): unseen mAP {ceiling['unseen']['mAP']:.4f}, macro-F1 {ceiling['unseen']['macro_f1']:.4f} ({ceiling['wall_s']:.0f} s)"
        )
    else:
        print("ceiling: not run (--no-ceiling)")
    header = f"{'run':24s} {'night':>5s} {'kind':5s} {'labels':>6s} {'flow s':>6s} {'gate':6s} {'gain interval':>17s} {'test n':>6s} {'test mAP':>8s} {'test F1':>7s} {'unseen mAP':>10s} {'unseen F1':>9s} {'cand. unseen':>12s}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, run in report["runs"].items():
        for row in run["rows"]:
            interval = row.get("gain_interval")
            gain = f"[{interval['low']:+.3f}, {interval['high']:+.3f}]" if interval else "-"
            test = row["test"] or {}
            print(
                f"{name:24s} {row['night']:5d} {row['kind']:5s} {row['photos_corrected']:6d} {row['wall_s']:6.0f} "
                f"{(row.get('verdict') or row.get('status') or '-')[:6]:6s} {gain:>17s} {row['test_photos'] or 0:6d} "
                f"{test.get('mAP') or float('nan'):8.4f} {test.get('macro_f1') or float('nan'):7.4f} "
                f"{row['unseen']['mAP']:10.4f} {row['unseen']['macro_f1']:9.4f} {candidate_map(row):12.4f}"
            )
    print("\nunseen AP of the classes the corrections corrected most (the night's three), before -> after the night:")
    for name, run in report["runs"].items():
        for before, row in zip(run["rows"], run["rows"][1:]):
            top = list(row.get("wrong_classes", {}))[:3]
            changes = ", ".join(f"{c} ({row['wrong_classes'][c]}) {ap_text(before, c)} -> {ap_text(row, c)}" for c in top)
            print(f"  {name} night {row['night']} {row['kind']}: {changes or '-'}")
    for kind in sorted({row["kind"] for run in report["runs"].values() for row in run["rows"][1:]}):
        walls = [row["wall_s"] for run in report["runs"].values() for row in run["rows"][1:] if row["kind"] == kind]
        print(f"{kind} flow: {np.mean(walls):.0f} s a night on average ({min(walls):.0f}-{max(walls):.0f} s, {len(walls)} runs)")
    print("\ntargets:")
    for target in report["targets"]:
        status = {True: "MET", False: "NOT MET", None: "NOT MEASURABLE"}[target["met"]]
        print(f"  [{status}] {target['target']}: {target['value']}")


def ap_text(row: dict, name: str) -> str:
    value = row["unseen"]["ap"].get(name)
    return "n/a" if value is None else f"{value:.3f}"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
    panels = [
        (axes[0], lambda row: row["unseen"]["mAP"], "unseen mAP (the fair curve)"),
        (axes[1], lambda row: row["unseen"]["macro_f1"], "unseen macro-F1"),
        (axes[2], lambda row: (row["test"] or {}).get("mAP"), "test mAP (that night's frozen test split)"),
    ]
    for ax, value, title in panels:
        for name, run in report["runs"].items():
            rows = [row for row in run["rows"] if row["kind"] in ("base", run["rows"][-1]["kind"])]
            points = [(row["photos_corrected"], value(row)) for row in rows if value(row) is not None]
            (line,) = ax.plot(*zip(*points), marker="o", markersize=3, label=name, linestyle="--" if run["corrupt"] else "-")
            if ax is axes[0] and any("candidate_unseen" in row for row in rows):  # what the labels bought, the gate aside
                candidates = [(row["photos_corrected"], candidate_map(row)) for row in rows]
                ax.plot(
                    *zip(*candidates), marker="x", markersize=4, linestyle=":", color=line.get_color(), label=f"{name}: night's candidate"
                )
        if ax is not axes[2] and report["ceiling"]:
            key = "mAP" if ax is axes[0] else "macro_f1"
            ax.axhline(report["ceiling"]["unseen"][key], color="black", linewidth=1, label="ceiling (all labels)")
        ax.set_xlabel("photos corrected")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="160 photos, a tiny recipe, one quick night, review and random: the plumbing (~12 min)"
    )
    parser.add_argument("--orders", nargs="+", choices=ORDERS, help="default: all three (smoke: review and random)")
    parser.add_argument(
        "--kind", choices=sorted(KINDS), help="the flow each night: full (the nightly), quick, or both (quick, then the nightly)"
    )
    parser.add_argument("--nights", type=int)
    parser.add_argument("--pool", type=int, help="photos users correct (default 500; smoke 40)")
    parser.add_argument("--unseen", type=int, help="photos nobody corrects, where every model is compared (default 300; smoke 40)")
    parser.add_argument(
        "--corrupt", type=float, default=0.0, help="also run the random order with this share of corrections corrupted, screen on and off"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the ceiling (6-7 min): for --corrupt draws, which compare with the clean run"
    )
    parser.add_argument("--work", type=Path, help="where the projects go (default: a temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the projects and the children's logs")
    parser.add_argument("--out", type=Path, help="default bench/results/loop.json (smoke: loop-smoke.json); the PNG beside it")
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the PNG of a saved result (beside it), running nothing")
    parser.add_argument(
        "--summary", type=Path, nargs="+", metavar="JSON", help="only print the corruption costs of saved --corrupt draws and their mean"
    )
    parser.add_argument("--child", choices=["pipeline", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = SMOKE if args.smoke else FULL
    args.kind = args.kind or scale.kind
    args.orders = args.orders or list(scale.orders)
    args.nights = args.nights or scale.nights
    args.pool = args.pool or scale.pool
    args.unseen = args.unseen or scale.unseen
    args.out = args.out or RESULTS_DIR / ("loop-smoke.json" if args.smoke else "loop.json")
    if not 0 <= args.corrupt < 1:
        parser.error("--corrupt is a share of corrections, 0 to 1")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args)
        return
    if args.summary:
        summarize(args.summary)
        return
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        print(f"redrawn: {args.replot.with_suffix('.png')}")
        return
    require_shared_data()
    started = time.perf_counter()
    scale = SMOKE if args.smoke else FULL
    classes, paths, y = load_photos()
    by_id = {path.stem: Photo(path.stem, str(path), tuple(c for c, on in zip(classes, row) if on)) for path, row in zip(paths, y)}
    pool, unseen, outside = draw(args, scale)
    work = args.work or Path(tempfile.mkdtemp(prefix="multitag-bench-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    params = project_params(scale)
    runs = planned_runs(args)
    report = {
        "benchmark": "loop",
        "machine": machine_info(),
        "setup": {
            "smoke": args.smoke,
            "photos": len(paths) - len(outside),
            "pool": len(pool),
            "unseen": len(unseen),
            "nights": args.nights,
            "night_size": -(-len(pool) // args.nights),
            "kind": args.kind,
            "seed": args.seed,
            "params": params,
            "pool_ids": pool,
            "unseen_ids": unseen,
        },
        "runs": {},
    }

    def save() -> None:
        report["seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float) + "\n")

    print(
        f"{report['setup']['photos']} photos: pool {len(pool)}, unseen {len(unseen)}; {args.nights} nights of {args.kind}; runs {[r.name for r in runs]}"
    )
    print(f"projects under {work}", flush=True)
    base = scratch_project(work / "base", outside | set(pool) | set(unseen), params)
    # made now, before anything runs: the same code as the base
    ceiling = None if args.no_ceiling else scratch_project(work / "ceiling", outside | set(unseen), params)
    unseen_photos = photos_of(unseen, by_id)
    print("base: the training pipeline without the pool and the unseen photos ...", flush=True)
    report["base"] = run_child("pipeline", base, {"label": "base", "needs_champion": True, "unseen": unseen_photos}, work)
    save()
    report["ceiling"] = None
    if ceiling:
        print("ceiling: the training pipeline on everything but the unseen photos ...", flush=True)
        report["ceiling"] = run_child("pipeline", ceiling, {"label": "ceiling", "needs_champion": False, "unseen": unseen_photos}, work)
        save()
    for run in runs:
        print(f"{run.name}: {args.nights} nights ...", flush=True)
        project = copy_project(base, work / run.name)
        if not run.screen:
            from multitag.params_file import set_params

            set_params(project / PARAMS, {"retrain.screen": False})
        config = {
            "label": run.name,
            "order": run.order,
            "order_ids": run_order(run, pool, args.seed),
            "kinds": KINDS[args.kind],
            "nights": args.nights,
            "night_size": report["setup"]["night_size"],
            "corrupt": run.corrupt,
            "seed": args.seed,
            "classes": classes,
            "pool": photos_of(pool, by_id),
            "unseen": unseen_photos,
            "base": report["base"],
        }
        report["runs"][run.name] = {
            "order": run.order,
            "corrupt": run.corrupt,
            "screen": run.screen,
            **run_child("loop", project, config, work),
        }
        save()
    report["targets"] = evaluate_targets(report)
    save()
    plot(report, args.out.with_suffix(".png"))
    print_report(report)
    print(f"\n{report['seconds']:.0f} s in all; results in {args.out} and {args.out.with_suffix('.png')}")
    if args.keep or args.work:
        print(f"projects and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
