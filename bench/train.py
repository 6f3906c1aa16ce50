"""Benchmark phase 1 of two-phase training (head on a frozen MobileNetV2) against a naive fit.

Both variants train the same head (`models.build_head`, same seed, same initial weights) for the
same number of epochs (default 10) with the project's own `fit_phase`: the same loss (`make_loss` with
`positive_weights`), Adam with the same cosine schedule and learning rate, the same batch size,
the per-epoch validation mAP that phase 1 early-stops on, no augmentation (phase 1 has none).
Early stopping cannot trigger: patience is set to the number of epochs.

- project: `extract_features` runs the frozen ImageNet backbone once over train + val, then the
  head is fitted on the cached feature arrays (what `train_architecture` does);
- naive: `models.assemble(extractor, head)` with `extractor.trainable = False`, fitted over the
  images (`ImageBatches`), so every epoch runs the backbone over train (and val, for val mAP).

Both variants draw the same batches in the same order (`ImageBatches` with the same seed, over
the feature array or over the images), so caching is the only difference and their val mAP
curves should agree to rounding. Wall time starts after the models are built and includes
feature extraction. Each run is a fresh subprocess (own TensorFlow graph tracing, own memory), in
the order project, naive, project; the project's time is the mean of its two runs. Reported too:
the ratio of CPU seconds (steadier than wall time on a shared machine) and of training alone
(leaving out the per-epoch validation callback and the val feature extraction). Data: the real
VOC photos in ../shared/datasets/voc-real, through the project's validate and preprocess stages
(official VOC train/val split, a frozen test share).

    .venv/bin/python bench/train.py             # the pipeline's VOC split (1,065 train / 227 val) at 128 px
    .venv/bin/python bench/train.py --quick     # 400 train / 160 val images, a fast check

MobileNetV2 ImageNet weights: only the 224 px no-top file exists offline (../shared/weights).
It is staged in a temporary KERAS_HOME under the file name Keras asks for at the chosen size,
so `weights="imagenet"` loads it offline (the same 224-trained weights, run at a smaller input).
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
from harness import RESULTS_DIR, ROOT, VOC_DIR, child_command, machine_info, require_shared_data, stage_imagenet_weights

RESULTS_PATH = RESULTS_DIR / "train.json"
ARCHITECTURE = "mobilenetv2"
QUICK_IMAGES = {"train": 400, "val": 160}
TARGET_SPEEDUP = 5.0
TARGET_MAP_GAP = 0.01


# --- the real VOC arrays (bench/transfer.py uses them too) ---------------------------------------


def bench_params(size: int, overrides: dict | None = None):
    """params.yaml with the VOC source and the benchmark's image size, plus `overrides`."""
    from multitag.config import load_params

    base = {"data.source": "voc", "data.path": str(VOC_DIR), "preprocess.image_size": size}
    return load_params(ROOT / "params.yaml", {**base, **(overrides or {})})


def prepare_voc_arrays(root: Path, size: int) -> Path:
    """Run the project's validate and preprocess stages on voc-real under `root`; the processed dir."""
    from multitag.layout import Layout
    from multitag.stages import preprocess_stage, validate_stage

    params, layout = bench_params(size), Layout(root=root)
    validate_stage(params, layout)
    preprocess_stage(params, layout)
    return layout.processed


# --- the child: one timed variant -------------------------------------------------------------


def child_main(args: argparse.Namespace) -> None:
    """Build the models (untimed), time one variant's phase 1 and write its numbers as JSON."""
    import keras
    import tensorflow as tf

    from multitag.modeling import batches, losses, models, train

    class TimedValidationMAP(train.ValidationMAP):
        """The project's per-epoch val-mAP callback, also adding up the seconds it takes."""

        seconds = 0.0

        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            TimedValidationMAP.seconds += time.perf_counter() - started

    train.ValidationMAP = TimedValidationMAP  # `fit_phase` looks the name up at call time
    params = bench_params(args.size, {"train.patience": args.epochs}).train  # patience >= epochs: no early stop
    has_gpu = train.configure_runtime(params.seed)
    processed = Path(args.processed)
    x_train, y_train = (a[: args.train_images] for a in train.load_split(processed, "train"))
    x_val, y_val = (a[: args.val_images] for a in train.load_split(processed, "val"))
    loss = losses.make_loss(params.class_weighting, losses.positive_weights(y_train))
    steps = len(batches.ImageBatches(x_train, y_train, params.batch_size, True, 0))

    extractor = models.build_feature_extractor(ARCHITECTURE, args.size, models.resolve_weights(ARCHITECTURE, "imagenet"))
    extractor.trainable = False
    keras.utils.set_random_seed(params.seed)  # the same initial head in every variant
    head = models.build_head(int(extractor.output_shape[-1]), y_train.shape[1], params.dense_units, params.dropout)
    log_dir = Path(args.result).with_suffix("") / train.HISTORY_DIR  # laid out as `read_history` reads it
    log_dir.mkdir(parents=True, exist_ok=True)
    train_feature_seconds = val_feature_seconds = 0.0
    cpu_start, started = os.times(), time.perf_counter()
    if args.child == "project":
        f_train = batches.extract_features(extractor, x_train, params.batch_size)
        train_feature_seconds = time.perf_counter() - started
        f_val = batches.extract_features(extractor, x_val, params.batch_size)
        val_feature_seconds = time.perf_counter() - started - train_feature_seconds
        network, train_inputs, val_inputs = head, f_train, f_val
    else:
        network, train_inputs = models.assemble(extractor, head), x_train
        val_inputs = batches.ImageBatches(x_val, y_val, params.batch_size, False, 0)
    # The same batches in the same order (ImageBatches, same seed) for features and for images,
    # so caching is the only difference; `train_architecture` passes the feature arrays to fit
    # instead, which shuffles differently but costs the same.
    data = (batches.ImageBatches(train_inputs, y_train, params.batch_size, True, params.seed),)
    fit_started = time.perf_counter()
    train.fit_phase(
        train.fitting_wrapper(network, None),
        data,
        val_inputs,
        y_val,
        args.epochs,
        params.head_learning_rate,
        steps,
        params,
        loss,
        log_dir / "head.csv",
        f"{args.child} head",
    )
    finished = time.perf_counter()
    cpu_end = os.times()
    history = train.read_history(log_dir.parent)
    val_map = history["head_val_mAP"]
    result = {
        "variant": args.child,
        "seconds": finished - started,
        "feature_seconds": train_feature_seconds + val_feature_seconds,
        "train_feature_seconds": train_feature_seconds,
        "val_feature_seconds": val_feature_seconds,
        "fit_seconds": finished - fit_started,
        "validation_seconds": TimedValidationMAP.seconds,
        "cpu_seconds": sum(cpu_end[:4]) - sum(cpu_start[:4]),
        "epochs_run": len(val_map),
        "val_mAP_last_epoch": val_map[-1],
        "val_mAP_best": max(val_map),
        "val_mAP_per_epoch": val_map,
        "loss_per_epoch": history["head_loss"],
        "train_images": len(x_train),
        "val_images": len(x_val),
        "gpu": has_gpu,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    # Training alone: leave out everything that only serves the validation mAP.
    result["training_seconds"] = result["seconds"] - result["validation_seconds"] - val_feature_seconds
    Path(args.result).write_text(json.dumps(result))


# --- the parent: prepare the data, run the children, report -----------------------------------


def measure(variant: str, args: argparse.Namespace, processed: Path, scratch: Path, index: int) -> dict:
    """Run one variant in a fresh subprocess and return its JSON result."""
    result_path, stderr_path = scratch / f"{index}-{variant}.json", scratch / f"{index}-{variant}.err"
    command = child_command(
        __file__,
        variant,
        "--processed",
        str(processed),
        "--result",
        str(result_path),
        "--size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--train-images",
        str(args.train_images),
        "--val-images",
        str(args.val_images),
    )
    print(f"  {variant:8s} ...", end="", flush=True)
    load = os.getloadavg()[0]
    with open(stderr_path, "w") as stderr:
        code = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, check=False).returncode
    if code != 0:
        sys.exit(f"\nthe {variant} run failed (exit {code}):\n{stderr_path.read_text()[-3000:]}")
    result = json.loads(result_path.read_text())
    result["load_avg_1min_before"] = load
    print(
        f" {result['seconds']:6.1f} s (features {result['feature_seconds']:.1f} s, fit {result['fit_seconds']:.1f} s, "
        f"of which per-epoch validation {result['validation_seconds']:.1f} s), val mAP {result['val_mAP_last_epoch']:.4f}"
    )
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--epochs", type=int, default=10, help="head epochs in both variants (default 10)")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_IMAGES['train']} train / {QUICK_IMAGES['val']} val images, for a fast check"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    for hidden in ("--child", "--processed", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--train-images", "--val-images"):
        parser.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args)
        return
    require_shared_data()
    scratch = Path(tempfile.mkdtemp(prefix="multitag-bench-train-"))
    try:
        stage_imagenet_weights(scratch / "keras", args.size)
        print(f"preparing {VOC_DIR} at {args.size}x{args.size} with the validate and preprocess stages ...")
        processed = prepare_voc_arrays(scratch / "project", args.size)
        counts = {split: int(np.load(processed / f"{split}_y.npy").shape[0]) for split in ("train", "val")}
        limits = QUICK_IMAGES if args.quick else counts
        args.train_images, args.val_images = min(limits["train"], counts["train"]), min(limits["val"], counts["val"])
        print(
            f"phase 1, {args.epochs} epochs, {ARCHITECTURE} imagenet at {args.size} px, {args.train_images} train / "
            f"{args.val_images} val images | {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        machine = machine_info()
        runs = [measure(variant, args, processed, scratch, i) for i, variant in enumerate(("project", "naive", "project"))]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    project_runs = [r for r in runs if r["variant"] == "project"]
    naive = next(r for r in runs if r["variant"] == "naive")
    project_seconds = float(np.mean([r["seconds"] for r in project_runs]))
    speedup = naive["seconds"] / project_seconds
    speedup_training = naive["training_seconds"] / float(np.mean([r["training_seconds"] for r in project_runs]))
    speedup_cpu = naive["cpu_seconds"] / float(np.mean([r["cpu_seconds"] for r in project_runs]))
    project = project_runs[0]
    gap_last = abs(project["val_mAP_last_epoch"] - naive["val_mAP_last_epoch"])
    gap_best = abs(project["val_mAP_best"] - naive["val_mAP_best"])
    curve_gap = float(np.max(np.abs(np.subtract(project["val_mAP_per_epoch"], naive["val_mAP_per_epoch"]))))
    repeat_gap = abs(project_runs[0]["val_mAP_last_epoch"] - project_runs[1]["val_mAP_last_epoch"])

    print()
    print(
        f"{'variant':8s} {'wall s':>7s} {'features s':>10s} {'fit s':>6s} {'val cb s':>8s} {'cpu s':>6s} "
        f"{'val mAP@' + str(args.epochs):>10s} {'best':>6s} {'load':>5s}"
    )
    for r in runs:
        print(
            f"{r['variant']:8s} {r['seconds']:7.1f} {r['feature_seconds']:10.1f} {r['fit_seconds']:6.1f} "
            f"{r['validation_seconds']:8.1f} {r['cpu_seconds']:6.1f} {r['val_mAP_last_epoch']:10.4f} "
            f"{r['val_mAP_best']:6.4f} {r['load_avg_1min_before']:5.1f}"
        )
    print()
    print(f"speedup (naive / cached): {speedup:.2f}x   (target >= {TARGET_SPEEDUP:.0f}x; project = mean of its 2 runs)")
    print(f"speedup in CPU seconds (user + sys): {speedup_cpu:.2f}x")
    print(f"speedup of training alone (without per-epoch validation and val features): {speedup_training:.2f}x")
    print(
        f"val mAP after {args.epochs} epochs: cached {project['val_mAP_last_epoch']:.4f}, naive {naive['val_mAP_last_epoch']:.4f}, "
        f"|diff| {gap_last:.4f} (target <= {TARGET_MAP_GAP}); best epoch |diff| {gap_best:.4f}; "
        f"largest per-epoch |diff| {curve_gap:.4f}; the 2 cached runs differ by {repeat_gap:.4f}"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "train_phase1",
        "machine": machine,
        "settings": {
            "architecture": ARCHITECTURE,
            "weights": "imagenet (224 px file)",
            "size": args.size,
            "epochs": args.epochs,
            "train_images": args.train_images,
            "val_images": args.val_images,
            "quick": args.quick,
            "order": [r["variant"] for r in runs],
            "dataset": str(VOC_DIR),
        },
        "runs": runs,
        "speedup_naive_over_cached": speedup,
        "speedup_cpu_seconds": speedup_cpu,
        "speedup_training_only": speedup_training,
        "val_mAP_gap_last_epoch": gap_last,
        "val_mAP_gap_best_epoch": gap_best,
        "val_mAP_gap_largest_per_epoch": curve_gap,
        "cached_repeat_val_mAP_gap": repeat_gap,
        "target": {"speedup": TARGET_SPEEDUP, "mAP_gap": TARGET_MAP_GAP, "met": speedup >= TARGET_SPEEDUP and gap_last <= TARGET_MAP_GAP},
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
