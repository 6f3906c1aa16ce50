"""Does the project's photo recipe beat a strong linear probe on real photos? voc-real, one run.

Three models, scored on the same frozen test split of ../shared/datasets/voc-real (the pipeline's
own split: validate + preprocess stages, a stratified 15 % test set), each in a fresh subprocess:

- champion: the photo recipe as `multitag pipeline --source voc` trains it (params.yaml with its
  `auto` values resolved for photos: multitag/recipes.py: the fine-tuned 224 px network and a
  probe reading the photos at 384 px, logits 0.3 / 0.7, both flip-averaged), thresholds tuned by
  `evaluate_model`;
- probe: the strong baseline. scikit-learn logistic regression on frozen ImageNet MobileNetV2
  features at 320 px, flip-averaged, fitted on train+val, C by 3-fold cross-validation on
  train+val (multitag/modeling/baselines.py, the gate's own probe); its thresholds are tuned by the
  project's rule on the out-of-fold scores, so it needs no split of its own;
- today: the recipe before this change: 224 px, the official VOC train/val split (same test),
  a 128-unit head, positive class weights, top 20 layers at 3e-4 for 8 epochs, no flip
  averaging, and F1-best thresholds with no bounds and no fallback for rare classes.

Printed per model, on test: mAP over the classes with test positives, mAP of the six frequent
classes, micro-F1 at the thresholds it would serve with, and predicted against true labels per
image; then the champion's margins over the probe.

    .venv/bin/python bench/transfer.py                    # all three (about 40 min on 2 cores)
    .venv/bin/python bench/transfer.py --methods champion probe
    .venv/bin/python bench/transfer.py --set train.fine_tune_epochs=3   # a champion variant
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from harness import RESULTS_DIR, ROOT, VOC_DIR, child_command, machine_info, require_shared_data, stage_imagenet_weights

RESULTS_PATH = RESULTS_DIR / "transfer.json"
METHODS = ("champion", "probe", "today")
FREQUENT = ["cat", "cow", "dog", "horse", "person", "sheep"]
PROBE_SIZE = 320
TODAY: dict[str, object] = {
    "preprocess.image_size": 224,
    "preprocess.keep_source_splits": True,
    "train.architectures": ["mobilenetv2"],
    "train.dense_units": [128],
    "train.class_weighting": "positive_weights",
    "train.fine_tune_layers": 20,
    "train.fine_tune_learning_rate": 3e-4,
    "train.fine_tune_epochs": 8,
    "train.flip_average": False,
    "train.probe_ensemble": False,
    "evaluate.min_threshold_positives": 1,
    "evaluate.threshold_bounds": [0.0, 1.0],
}


def method_params(method: str, extra: dict):
    """params.yaml on voc-real, with the method's own settings on top."""
    from multitag.config import load_params
    from multitag.recipes import PHOTOS, RECIPES

    # the architectures `multitag pipeline --source voc` records (params.yaml holds the demo's)
    base = {"data.source": "voc", "data.path": str(VOC_DIR), "train.architectures": RECIPES[PHOTOS]["train.architectures"]}
    overrides = {**base, **(TODAY if method == "today" else {}), **(extra if method == "champion" else {})}
    if method == "probe":
        overrides["preprocess.image_size"] = PROBE_SIZE
    return load_params(ROOT / "params.yaml", overrides)


# --- the children ------------------------------------------------------------------------------


def run_trained(processed: Path, params, out_dir: Path) -> dict:
    """Train like the pipeline's train stage, tune thresholds like its evaluate stage."""
    from multitag.data.manifest import read_classes
    from multitag.modeling.evaluate import evaluate_model
    from multitag.modeling.train import MODEL_FILE, load_served_model, train_architecture

    architecture = params.train.architectures[0]
    result = train_architecture(architecture, processed, out_dir, params.train)
    classes = read_classes(processed / "classes.json")
    evaluation = evaluate_model(architecture, load_served_model(out_dir), out_dir / MODEL_FILE, processed, classes, params.evaluate)
    return {
        "scores": evaluation.scores_test,
        "thresholds": np.asarray(evaluation.thresholds),
        "info": {
            "train_seconds": result.train_seconds,
            "fine_tune_seconds": result.fine_tune_seconds,
            "default_threshold_classes": evaluation.default_threshold_classes,
            "image_size": result.input_size,
        },
    }


def run_probe(processed: Path, params) -> dict:
    """The strong probe: 320 px flip-averaged features, train+val, C by CV, out-of-fold thresholds."""
    from multitag.data.preprocess import load_split
    from multitag.modeling import baselines, metrics

    started = time.perf_counter()
    data = {name: load_split(processed, name) for name in ("train", "val", "test")}
    extractor = baselines.frozen_extractor(PROBE_SIZE)
    features = {name: baselines.flip_averaged_features(extractor, x) for name, (x, _) in data.items()}
    fit_x = np.concatenate([features["train"], features["val"]])
    fit_y = np.concatenate([data["train"][1], data["val"][1]])
    fitted = baselines.fit_probes(fit_x, fit_y, params.train.seed)
    out_of_fold = baselines.out_of_fold_scores(fit_x, fit_y, fitted.c, params.train.seed)
    e = params.evaluate
    thresholds = metrics.tune_thresholds(fit_y, out_of_fold, e.min_threshold_positives, e.default_threshold, e.threshold_bounds)
    return {
        "scores": baselines.probe_scores(fitted.probes, features["test"]),
        "thresholds": thresholds,
        "info": {"seconds": time.perf_counter() - started, "C": fitted.c, "cv_mAP_by_C": {str(k): v for k, v in fitted.cv_map.items()}},
    }


def child_main(args: argparse.Namespace) -> None:
    processed, extra = Path(args.processed), json.loads(args.overrides_json)
    params = method_params(args.child, extra)
    result = run_probe(processed, params) if args.child == "probe" else run_trained(processed, params, Path(args.model_dir))
    np.savez(args.result + ".npz", scores=result["scores"], thresholds=result["thresholds"])
    Path(args.result + ".json").write_text(json.dumps(result["info"], default=float))


# --- the parent ----------------------------------------------------------------------------------


def prepare(scratch: Path, methods: list[str], extra: dict) -> dict[str, Path]:
    """Validate once, then preprocess per method into its own folder, all sharing one frozen test
    split (drawn by the champion's preprocessing, which runs first), as the pipeline would."""
    from multitag.data.preprocess import preprocess
    from multitag.data.splits import dataset_key
    from multitag.layout import Layout
    from multitag.stages import validate_stage

    layout = Layout(root=scratch / "project")
    validate_stage(method_params("champion", extra), layout)
    folders = {}
    for method in ["champion", *[m for m in methods if m != "champion"]]:
        params = method_params(method, extra)
        folders[method] = scratch / f"processed-{method}"
        preprocess(
            layout.validated / "manifest.parquet",
            layout.validated / "classes.json",
            folders[method],
            params.preprocess,
            layout.frozen_test,
            dataset_key("voc", VOC_DIR),
        )
    return folders


def scores_on_test(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict:
    from multitag.modeling.metrics import (
        apply_thresholds,
        average_precision_per_class,
        compute_metrics,
    )

    ap = average_precision_per_class(y, scores)
    predicted = apply_thresholds(scores, thresholds)
    return {
        "mAP": float(np.nanmean(ap)),
        "frequent6_mAP": float(np.mean([ap[classes.index(c)] for c in FREQUENT])),
        "micro_f1_served": compute_metrics(y, scores, thresholds, classes)["micro_f1"],
        "labels_per_image_predicted": float(predicted.sum() / len(y)),
        "labels_per_image_true": float(y.sum() / len(y)),
        "classes_scored": int(np.sum(~np.isnan(ap))),
    }


def measure(method: str, folder: Path, scratch: Path, extra: dict) -> dict:
    from multitag.data.manifest import read_classes

    result = scratch / method
    command = child_command(
        __file__,
        method,
        "--processed",
        str(folder),
        "--result",
        str(result),
        "--overrides-json",
        json.dumps(extra),
        "--model-dir",
        str(scratch / "models" / method),
    )
    print(f"  {method:9s} ... (progress below)", flush=True)
    started = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    if code != 0:
        sys.exit(f"the {method} run failed (exit {code}); its output is above")
    arrays = np.load(str(result) + ".npz")
    y_test = np.load(folder / "test_y.npy")
    row = scores_on_test(y_test, arrays["scores"], arrays["thresholds"], read_classes(folder / "classes.json"))
    row.update(method=method, seconds=time.perf_counter() - started, info=json.loads(Path(str(result) + ".json").read_text()))
    print(
        f"  {method:9s} test mAP {row['mAP']:.4f}, frequent-6 {row['frequent6_mAP']:.4f}, micro-F1 {row['micro_f1_served']:.4f}, "
        f"{row['seconds']:.0f} s",
        flush=True,
    )
    return row


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"--set takes GROUP.KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--set",
        dest="overrides",
        type=parse_override,
        action="append",
        default=[],
        help="a params key for the champion, e.g. train.fine_tune_epochs=3 (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    for hidden in ("--child", "--processed", "--result", "--model-dir", "--overrides-json"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args)
        return
    require_shared_data()
    extra = dict(args.overrides)
    method_params("champion", extra)  # a typo in --set fails here, before any work
    scratch = Path(tempfile.mkdtemp(prefix="multitag-bench-transfer-"))
    started = time.perf_counter()
    try:
        for size in {224, PROBE_SIZE, int(method_params("champion", extra).preprocess.image_size)}:
            stage_imagenet_weights(scratch / "keras", size)
        print(f"preparing {VOC_DIR} with the validate and preprocess stages ...", flush=True)
        folders = prepare(scratch, args.methods, extra)
        counts = {m: {s: int(np.load(f / f"{s}_y.npy").shape[0]) for s in ("train", "val", "test")} for m, f in folders.items()}
        print(f"images per split: {counts} | {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
        machine = machine_info()
        rows = [measure(method, folders[method], scratch, extra) for method in args.methods]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - started

    print(f"\n{'model':9s} {'mAP':>7s} {'freq-6':>7s} {'microF1':>8s} {'labels/img':>11s} {'seconds':>8s}")
    for r in rows:
        print(
            f"{r['method']:9s} {r['mAP']:7.4f} {r['frequent6_mAP']:7.4f} {r['micro_f1_served']:8.4f} "
            f"{r['labels_per_image_predicted']:5.2f}/{r['labels_per_image_true']:.2f} {r['seconds']:8.0f}"
        )
    by = {r["method"]: r for r in rows}
    margins = {}
    for other in ("probe", "today"):
        if {"champion", other} <= by.keys():
            margins[other] = {k: by["champion"][k] - by[other][k] for k in ("mAP", "frequent6_mAP", "micro_f1_served")}
            print(
                f"champion - {other}: mAP {margins[other]['mAP']:+.4f}, frequent-6 {margins[other]['frequent6_mAP']:+.4f}, "
                f"micro-F1 {margins[other]['micro_f1_served']:+.4f}"
            )
    print(f"total {total:.0f} s (data preparation and process start-up included)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "transfer",
        "machine": machine,
        "images": counts,
        "champion_overrides": extra,
        "today": TODAY,
        "probe_size": PROBE_SIZE,
        "runs": rows,
        "margins": margins,
        "total_seconds": total,
    }
    args.out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
