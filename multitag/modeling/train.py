"""Two-phase training of one architecture on the processed arrays.

Phase 1 runs the frozen backbone once per image and fits the head on those cached features
(epochs cost milliseconds instead of a backbone pass each). Phase 2 unfreezes the top of the
backbone and fine-tunes end to end with augmentation, a lower learning rate and early stopping
on validation mAP. `small_cnn` has no pretrained backbone and trains end to end from scratch.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from multitag.config import TrainParams
from multitag.data import manifest
from multitag.data.preprocess import load_split
from multitag.modeling import models
from multitag.modeling.baselines import fit_probes, probe_weights
from multitag.modeling.batches import ImageBatches, extract_features, flip_averaged_features
from multitag.modeling.callbacks import EpochProgress, ValidationMAP, report
from multitag.modeling.feature_cache import cache_file, cached_features, member_file, weights_digest
from multitag.modeling.losses import augmentation, make_loss, positive_weights
from multitag.modeling.train_record import TrainResult

MODEL_FILE = "model.keras"
HISTORY_DIR = "history"  # one CSVLogger file per phase
PHASES = ("head", "fine_tune")


def configure_runtime(seed: int) -> bool:
    """Seed everything; deterministic ops on CPU, mixed precision + XLA on a GPU. Returns has_gpu."""
    keras.utils.set_random_seed(seed)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if has_gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        tf.config.experimental.enable_op_determinism()
    return has_gpu


def fit_phase(model, data, val_inputs, y_val, epochs, learning_rate, steps, params: TrainParams, loss, log_path: Path, label: str):
    """Compile with a cosine schedule and fit with val-mAP early stopping; Keras' CSVLogger writes
    each epoch's logs (loss, val_mAP) to `log_path` as the epoch ends."""
    if epochs <= 0:
        return
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, epochs * steps))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, jit_compile="auto")
    callbacks = [
        ValidationMAP(val_inputs, y_val, params.batch_size),  # first: the others read its val_mAP
        keras.callbacks.CSVLogger(str(log_path)),
        EpochProgress(label, epochs),
        keras.callbacks.EarlyStopping("val_mAP", mode="max", patience=params.patience, restore_best_weights=True),
    ]
    fit_kwargs = {"batch_size": params.batch_size} if isinstance(data[0], np.ndarray) else {}
    model.fit(*data, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=True, **fit_kwargs)


def read_history(model_dir: Path) -> dict[str, list[float]]:
    """The per-epoch logs of both phases, keyed `<phase>_<name>` (`head_loss`, `fine_tune_val_mAP`),
    read from the CSVLogger files under `<model_dir>/history/`; a phase that did not run is absent."""
    history: dict[str, list[float]] = {}
    for phase in PHASES:
        path = model_dir / HISTORY_DIR / f"{phase}.csv"
        if path.exists():
            with path.open(newline="") as rows:
                for row in csv.DictReader(rows):
                    for name, value in row.items():
                        if name != "epoch":
                            history.setdefault(f"{phase}_{name}", []).append(float(value))
    return history


def train_architecture(
    name: str,
    processed_dir: Path,
    out_dir: Path,
    params: TrainParams,
    init_model: Path | None = None,
    feature_cache: Path | None = None,
    quick: bool = False,
) -> TrainResult:
    """Train one architecture and save the served (sigmoid) model; the per-epoch logs go to
    `<out_dir>/history/<phase>.csv` while it trains (`read_history` reads them back).

    From `init_model` (the champion's served model) it is a warm start: the network starts from
    the champion's weights and fine-tunes what the recipe fine-tunes. `quick` (with `init_model`)
    refits only the cheap member on all labelled data: the probe (frozen ImageNet features) where
    the ensemble has one, keeping the champion's network as it is; else the head, on the frozen
    network's features. Minutes instead of a full run, for corrections to take effect (issue 21).
    Not the head beside a probe: refitted on features of the very photos its backbone was
    fine-tuned on, it overfits them (voc-real: test mAP -0.03 against +0.00 for the probe alone,
    bench/README.md). With a `feature_cache` folder, frozen features of photos seen before are read,
    not recomputed."""
    if quick and init_model is None:
        raise ValueError("a quick refit starts from a model: pass init_model")
    configure_runtime(params.seed)
    x_train, y_train = load_split(processed_dir, "train")
    x_val, y_val = load_split(processed_dir, "val")
    classes = manifest.read_classes(processed_dir / "classes.json")
    size = int(x_train.shape[1])
    weights = models.resolve_weights(name, params.weights.get(name))
    arch = models.architecture(name)
    loss = make_loss(params.class_weighting, positive_weights(y_train))
    history_dir = out_dir / HISTORY_DIR
    shutil.rmtree(history_dir, ignore_errors=True)  # a warm start may skip the head phase: no stale log
    history_dir.mkdir(parents=True)
    timings = {"feature": 0.0, "head": 0.0, "fine_tune": 0.0}
    started = time.perf_counter()

    extractor = models.build_feature_extractor(name, size, weights)
    head = models.build_head(int(extractor.output_shape[-1]), len(classes), params.dense_units, params.dropout)
    logits_model = models.assemble(extractor, head)
    if init_model is not None:
        logits_model.set_weights(_logits_weights(init_model))
    steps = len(ImageBatches(x_train, y_train, params.batch_size, True, 0))
    train_batches = ImageBatches(x_train, y_train, params.batch_size, True, params.seed)
    val_batches = ImageBatches(x_val, y_val, params.batch_size, False, 0)

    with_probe = bool(params.probe_ensemble) and arch.pretrained
    if (quick and not with_probe) or (arch.pretrained and init_model is None):
        extractor.trainable = False
        t0 = time.perf_counter()
        report(f"{name}: frozen {name} features of {len(x_train) + len(x_val)} images at {size}px ...")
        path = None if feature_cache is None else cache_file(feature_cache, network=weights_digest(extractor), image=size, views="plain")
        features, computed = cached_features(
            path, np.concatenate([x_train, x_val]), lambda rows: extract_features(extractor, rows, params.batch_size)
        )
        f_train, f_val = features[: len(x_train)], features[len(x_train) :]
        timings["feature"] = time.perf_counter() - t0
        cached = f" ({len(features) - computed} of them cached)" if path is not None else ""
        report(f"{name}: features in {timings['feature']:.0f} s{cached}; training the head on them")
        t0 = time.perf_counter()
        fit_phase(
            fitting_wrapper(head, None),
            (f_train, y_train.astype("float32")),
            f_val,
            y_val,
            params.head_epochs,
            params.head_learning_rate,
            steps,
            params,
            loss,
            history_dir / "head.csv",
            f"{name} head",
        )
        timings["head"] = time.perf_counter() - t0
    if arch.pretrained:  # a warm start too: it trains what the recipe trains, not every backbone layer (4x slower)
        models.unfreeze_top(extractor, params.fine_tune_layers)
    fine_tune_epochs = 0 if quick else params.fine_tune_epochs if arch.pretrained else params.small_cnn_epochs
    learning_rate = params.fine_tune_learning_rate if arch.pretrained else params.head_learning_rate
    trainer = fitting_wrapper(logits_model, augmentation(params.seed) if params.augment else None)
    trainable = _count(logits_model.trainable_weights) if fine_tune_epochs > 0 else 0
    t0 = time.perf_counter()
    label = f"{name} {'fine-tune' if arch.pretrained else 'from scratch'}"
    start = "warm-started from the champion, " if init_model is not None else ""
    if fine_tune_epochs > 0:
        report(
            f"{label}: {start}up to {fine_tune_epochs} epochs on {len(x_train)} images, {trainable:,} weights trained (early stopping on val mAP)"
        )
    fit_phase(
        trainer,
        (train_batches,),
        val_batches,
        y_val,
        fine_tune_epochs,
        learning_rate,
        steps,
        params,
        loss,
        history_dir / "fine_tune.csv",
        label,
    )
    timings["fine_tune"] = time.perf_counter() - t0

    probe = _probe_branch(name, size, weights, x_train, y_train, params, feature_cache) if with_probe else None
    served = models.with_sigmoid(logits_model, bool(params.flip_average), probe, float(params.network_weight))
    served.save(out_dir / MODEL_FILE)
    history = read_history(out_dir)
    val_history = [v for v in history.get("fine_tune_val_mAP") or history.get("head_val_mAP") or [] if not np.isnan(v)]
    result = TrainResult(
        name,
        str(out_dir / MODEL_FILE),
        size,
        classes,
        weights,
        time.perf_counter() - started,
        timings["feature"],
        timings["head"],
        timings["fine_tune"],
        max(val_history, default=float("nan")),  # none: a quick refit trains no epoch
        int(served.count_params()),
        trainable,
        "quick" if quick else "warm" if init_model is not None else "cold",
    )
    result.write(out_dir)
    report(f"{name}: done in {result.train_seconds:.0f} s, {best_val_text(result.best_val_mAP)}")
    return result


def best_val_text(best_val_map: float) -> str:
    """The best epoch's validation mAP in words; a quick refit trains no epoch, so it has none."""
    return "no epoch trained (quick refit: evaluate scores it)" if np.isnan(best_val_map) else f"best val mAP {best_val_map:.4f}"


def _count(weights: list) -> int:
    return int(sum(np.prod(weight.shape) for weight in weights))


def fitting_wrapper(network: keras.Model, augment: keras.Sequential | None) -> keras.Model:
    """A wrapper that is compiled and fitted instead of `network` itself, so the saved model
    carries no optimizer, loss or augmentation: only what serving needs."""
    inputs = keras.Input(network.input_shape[1:])
    return keras.Model(inputs, network(augment(inputs) if augment is not None else inputs))


def _probe_branch(
    name: str, size: int, weights: str | None, x_train: np.ndarray, y_train: np.ndarray, params: TrainParams, cache: Path | None
) -> keras.Model:
    """The ensemble's second member: a logistic-regression probe on frozen ImageNet features of
    the training images, read at `probe_input_size` and flip-averaged as served, C by
    cross-validation on train (train only, so its validation scores stay honest for thresholds).
    Features of photos already in `cache` are read from it."""
    frozen = models.build_feature_extractor(name, int(params.probe_input_size), weights)
    frozen.trainable = False
    features_model = models.probe_features(frozen, size)
    t0 = time.perf_counter()
    report(f"{name} probe: frozen features of {len(x_train)} images at {params.probe_input_size}px, both views ...")
    # the served model's probe member: evaluate (modeling/ensemble.py) reads the same file for val/test photos
    path = None if cache is None else member_file(cache, features_model, size, flip=True)
    features, computed = cached_features(path, x_train, lambda rows: flip_averaged_features(features_model, rows, params.batch_size))
    cached = f" ({len(x_train) - computed} of them cached)" if path is not None else ""
    report(f"{name} probe: features in {time.perf_counter() - t0:.0f} s{cached}; fitting the logistic regression")
    t0 = time.perf_counter()
    fitted = fit_probes(features, y_train, params.seed)
    report(f"{name} probe: logistic regression on frozen features, C={fitted.c} (3-fold CV on train), {time.perf_counter() - t0:.0f} s")
    return models.probe_branch(features_model, *probe_weights(fitted.probes, features.shape[1]))


def _logits_weights(init_model: Path) -> list[np.ndarray]:
    """Weights of the fine-tuned network inside a saved served model: a warm start (a probe
    branch, if any, is refitted on the new data instead)."""
    served = keras.models.load_model(init_model, compile=False)
    return served.get_layer("multitag_logits").get_weights()


def load_served_model(model_dir: Path) -> keras.Model:
    return keras.models.load_model(model_dir / MODEL_FILE, compile=False)
