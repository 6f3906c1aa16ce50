"""Does the project's fine-tuning beat a linear probe? Transfer learning on the real VOC photos.

Three models on the same processed arrays (one run of the validate and preprocess stages, the
official VOC train/val split, default 160 px), each in its own fresh subprocess:

- probe: scikit-learn `LogisticRegression`, one binary model per class (one-vs-rest), on the
  frozen ImageNet MobileNetV2 pooled features (`extract_features`); classes without positives in
  train are skipped (score 0). C is chosen by 3-fold cross-validation on train only (mean AP of
  the out-of-fold scores), so the probe never sees val; features are used raw (all ReLU6 pooled
  activations on one scale);
- mobilenetv2: the project's `train_architecture("mobilenetv2", ...)`, two-phase fine-tuning;
- small_cnn: `train_architecture("small_cnn", ...)`, trained from scratch.

Every score is mAP from `metrics.average_precision_per_class` (classes without positives left
out) on the predictions of the saved model. `train_architecture` picks its epochs by val mAP
(early stopping with restore_best_weights), so its val mAP is slightly optimistic; the frozen
test split, which no model sees, is scored too as the check on that.

    .venv/bin/python bench/transfer.py                                   # the settings in FINE_TUNE_OVERRIDES
    .venv/bin/python bench/transfer.py --set train.fine_tune_epochs=4    # try other train params
    .venv/bin/python bench/transfer.py --methods probe mobilenetv2       # a subset

Needs ../shared (photos and weights); the 224 px ImageNet weights are staged for the chosen size
as in bench/train.py.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (  # bench/train.py: offline weights and the VOC arrays
    ROOT,
    VOC_DIR,
    bench_params,
    machine_info,
    prepare_voc_arrays,
    require_shared_data,
    stage_imagenet_weights,
)

RESULTS_PATH = ROOT / "bench" / "results" / "transfer.json"
METHODS = ("probe", "mobilenetv2", "small_cnn")
PROBE_CS = (0.001, 0.01, 0.1, 1.0)
PROBE_FOLDS = 3
# Train params for both architectures on top of params.yaml, chosen on val only (bench/README.md):
# at the default 3e-4 the fine-tune val mAP peaks at epoch 2 and then falls; at 1e-4 with the top
# 40 layers it climbs and holds, with the best last-epoch val mAP of the settings tried.
FINE_TUNE_OVERRIDES: dict[str, object] = {"train.fine_tune_learning_rate": 1e-4, "train.fine_tune_layers": 40}


# --- the children -------------------------------------------------------------------------------


def mean_ap(y_true: np.ndarray, scores: np.ndarray) -> float:
    from multitag.metrics import average_precision_per_class

    return float(np.nanmean(average_precision_per_class(y_true, scores)))


def fit_probe(features: np.ndarray, y: np.ndarray, c: float) -> list:
    """One logistic regression per class; None where train has no positives (or no negatives)."""
    from sklearn.linear_model import LogisticRegression

    return [LogisticRegression(C=c, max_iter=2000).fit(features, y[:, k]) if 0 < y[:, k].sum() < len(y) else None
            for k in range(y.shape[1])]


def probe_scores(probes: list, features: np.ndarray) -> np.ndarray:
    return np.column_stack([p.predict_proba(features)[:, 1] if p is not None else np.zeros(len(features)) for p in probes])


def choose_c(features: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, dict[str, float]]:
    """The C with the best mean AP of out-of-fold scores on train (K-fold), and every C's score."""
    from sklearn.model_selection import KFold

    cv_map = {}
    for c in PROBE_CS:
        out_of_fold = np.zeros(y.shape, dtype="float64")
        for fit_rows, score_rows in KFold(PROBE_FOLDS, shuffle=True, random_state=seed).split(features):
            out_of_fold[score_rows] = probe_scores(fit_probe(features[fit_rows], y[fit_rows], c), features[score_rows])
        cv_map[str(c)] = mean_ap(y, out_of_fold)
    return float(max(PROBE_CS, key=lambda c: cv_map[str(c)])), cv_map


def run_probe(processed: Path, size: int) -> dict:
    from threadpoolctl import threadpool_limits

    from multitag import models, train

    params = bench_params(size).train
    train.configure_runtime(params.seed)
    splits = {s: train.load_split(processed, s) for s in ("train", "val", "test")}
    extractor = models.build_feature_extractor("mobilenetv2", size, "imagenet")
    extractor.trainable = False
    started = time.perf_counter()
    features = {s: train.extract_features(extractor, x, params.batch_size) for s, (x, _) in splits.items()}
    feature_seconds = time.perf_counter() - started
    features = {s: f.astype("float64") for s, f in features.items()}
    y_train = splits["train"][1]
    # One BLAS thread: on 2 busy cores, multi-threaded lbfgs was ~35x slower (threads spinning).
    with threadpool_limits(1):
        c, cv_map = choose_c(features["train"], y_train, params.seed)
        probes = fit_probe(features["train"], y_train, c)
    return {
        "seconds": time.perf_counter() - started, "feature_seconds": feature_seconds,
        "val_mAP": mean_ap(splits["val"][1], probe_scores(probes, features["val"])),
        "test_mAP": mean_ap(splits["test"][1], probe_scores(probes, features["test"])),
        "C": c, "cv_mAP_by_C": cv_map, "skipped_classes": [k for k, p in enumerate(probes) if p is None],
    }


def run_trained(architecture: str, processed: Path, size: int, overrides: dict, out_dir: Path) -> dict:
    from multitag.evaluate import predict
    from multitag.preprocess import load_split
    from multitag.train import load_served_model, train_architecture

    params = bench_params(size, overrides).train
    result = train_architecture(architecture, processed, out_dir, params)
    history = json.loads((out_dir / "history.json").read_text())
    model = load_served_model(out_dir)
    scores = {s: mean_ap(y, predict(model, x)) for s, (x, y) in ((s, load_split(processed, s)) for s in ("val", "test"))}
    return {
        "seconds": result.train_seconds, "feature_seconds": result.feature_seconds, "head_seconds": result.head_seconds,
        "fine_tune_seconds": result.fine_tune_seconds, "val_mAP": scores["val"], "test_mAP": scores["test"],
        "best_val_mAP_in_history": result.best_val_mAP, "parameters": result.parameters,
        "head_epochs_run": len(history.get("head_val_mAP", [])),
        "head_best_val_mAP": max(history.get("head_val_mAP", [float("nan")])),
        "fine_tune_epochs_run": len(history.get("fine_tune_val_mAP", [])),
        "fine_tune_val_mAP_per_epoch": history.get("fine_tune_val_mAP", []),
        "params": params.model_dump(),
    }


def child_main(args: argparse.Namespace) -> None:
    processed, overrides = Path(args.processed), json.loads(args.overrides_json)
    if args.child == "probe":
        result = run_probe(processed, args.size)
    else:
        result = run_trained(args.child, processed, args.size, overrides, Path(args.model_dir))
    Path(args.result).write_text(json.dumps(result))


# --- the parent -------------------------------------------------------------------------------


def measure(method: str, args: argparse.Namespace, processed: Path, scratch: Path, overrides: dict) -> dict:
    result_path, stderr_path = scratch / f"{method}.json", scratch / f"{method}.err"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--processed", str(processed),
               "--result", str(result_path), "--size", str(args.size), "--overrides-json", json.dumps(overrides),
               "--model-dir", str(scratch / "models" / method)]
    print(f"  {method:12s} ...", end="", flush=True)
    load, started = os.getloadavg()[0], time.perf_counter()
    with open(stderr_path, "w") as stderr:
        code = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, check=False).returncode
    if code != 0:
        sys.exit(f"\nthe {method} run failed (exit {code}):\n{stderr_path.read_text()[-3000:]}")
    result = json.loads(result_path.read_text())
    result.update(method=method, load_avg_1min_before=load, process_seconds=time.perf_counter() - started)
    print(f" val mAP {result['val_mAP']:.4f}, test mAP {result['test_mAP']:.4f}, {result['seconds']:.0f} s")
    return result


def parse_override(text: str) -> tuple[str, object]:
    """`train.key=value` with a YAML value (numbers, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("train."):
        raise argparse.ArgumentTypeError(f"--set takes train.KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="which models to run (default all)")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        help="a train param on top of FINE_TUNE_OVERRIDES, e.g. train.fine_tune_epochs=6 (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    for hidden in ("--child", "--processed", "--result", "--model-dir", "--overrides-json"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args)
        return
    require_shared_data()
    overrides = {**FINE_TUNE_OVERRIDES, **dict(args.overrides)}
    bench_params(args.size, overrides)  # a typo in --set fails here, before any work
    scratch = Path(tempfile.mkdtemp(prefix="multitag-bench-transfer-"))
    started = time.perf_counter()
    try:
        stage_imagenet_weights(scratch / "keras", args.size)
        print(f"preparing {VOC_DIR} at {args.size}x{args.size} with the validate and preprocess stages ...")
        processed = prepare_voc_arrays(scratch / "project", args.size)
        counts = {s: int(np.load(processed / f"{s}_y.npy").shape[0]) for s in ("train", "val", "test")}
        print(f"{counts['train']} train / {counts['val']} val / {counts['test']} test images | train overrides: {overrides or 'none'} "
              f"| {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        machine = machine_info()
        runs = [measure(method, args, processed, scratch, overrides) for method in args.methods]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - started

    print()
    print(f"{'model':12s} {'val mAP':>8s} {'test mAP':>8s} {'seconds':>8s}  notes")
    for r in runs:
        if r["method"] == "probe":
            note = f"C={r['C']} (3-fold CV on train), features {r['feature_seconds']:.0f} s"
        elif r["head_epochs_run"] == 0:
            note = f"from scratch, {r['fine_tune_epochs_run']} ep (early stopping)"
        else:
            note = (f"features {r['feature_seconds']:.0f} s, head {r['head_epochs_run']} ep (best val {r['head_best_val_mAP']:.4f}, "
                    f"{r['head_seconds']:.0f} s), fine-tune {r['fine_tune_epochs_run']} ep ({r['fine_tune_seconds']:.0f} s)")
        print(f"{r['method']:12s} {r['val_mAP']:8.4f} {r['test_mAP']:8.4f} {r['seconds']:8.0f}  {note}")
    by_method = {r["method"]: r for r in runs}
    verdict = {}
    if {"probe", "mobilenetv2"} <= by_method.keys():
        probe, tuned = by_method["probe"], by_method["mobilenetv2"]
        verdict = {"val": tuned["val_mAP"] > probe["val_mAP"], "test": tuned["test_mAP"] > probe["test_mAP"],
                   "val_margin": tuned["val_mAP"] - probe["val_mAP"], "test_margin": tuned["test_mAP"] - probe["test_mAP"]}
        print(f"\nfine-tuned > probe on val: {'yes' if verdict['val'] else 'no'} ({verdict['val_margin']:+.4f}); "
              f"on test: {'yes' if verdict['test'] else 'no'} ({verdict['test_margin']:+.4f})")
    print(f"total {total:.0f} s (data preparation and process start-up included)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "transfer",
        "machine": machine,
        "settings": {"size": args.size, "dataset": str(VOC_DIR), "images": counts, "train_overrides": overrides,
                     "probe": {"Cs": list(PROBE_CS), "folds": PROBE_FOLDS, "features": "mobilenetv2 imagenet, pooled (raw, not standardised)"}},
        "runs": runs,
        "fine_tuned_beats_probe": verdict,
        "total_seconds": total,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
