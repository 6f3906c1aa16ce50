"""Report figures for training and evaluation, saved as PNG files for MLflow artefacts and DVC plots.

The module uses the Agg backend, so it draws headless inside pipeline stages, Prefect workers
and CI. Each function saves one figure, closes it, because pyplot keeps open figures alive
and a long flow would otherwise leak memory, and returns the saved path.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot loads, which picks the backend on import
import matplotlib.pyplot as plt
import numpy as np

from multitag.modeling.metrics import apply_thresholds, average_precision_per_class, precision_recall_steps

_COUNT_COLUMNS = ("tp", "fp", "fn", "tn")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """One line per history key against epoch. Losses and other metrics get separate panels
    because their scales differ."""
    if not history:
        raise ValueError("history is empty: pass Keras' History.history after at least one epoch")
    groups = [
        [key for key in history if "loss" in key],
        [key for key in history if "loss" not in key],
    ]
    groups = [keys for keys in groups if keys]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False, layout="constrained")
    for ax, keys in zip(axes[0], groups):
        for key in keys:
            ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def per_class_ap_bar(ap_by_class: dict[str, float | None], path: str | Path) -> Path:
    """Horizontal AP bars in class order. Classes without positives read "n/a" and get no bar,
    so that they do not look like a score of 0."""
    names = list(ap_by_class)
    values = [ap_by_class[name] for name in names]
    undefined = [value is None or math.isnan(value) for value in values]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    positions = np.arange(len(names))
    ax.barh(positions, [0.0 if missing else value for missing, value in zip(undefined, values)], color="tab:blue")
    for y, missing, value in zip(positions, undefined, values):
        ax.text(0.01 if missing else value + 0.01, y, "n/a" if missing else f"{value:.2f}", va="center", fontsize=8)
    ax.set_yticks(positions, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("average precision")
    return _save(fig, path)


def precision_recall_curves(y_true: np.ndarray, y_score: np.ndarray, classes: list[str], path: str | Path, n_cols: int = 5) -> Path:
    """One small precision-recall panel per class that has positives, titled with its AP.

    The step curve is the same one AP integrates, so the figure and the number cannot disagree.
    """
    y_true = np.asarray(y_true, dtype=bool)
    ap = average_precision_per_class(y_true, y_score)
    shown = [c for c in range(len(classes)) if y_true[:, c].any()]
    if not shown:
        raise ValueError("no class has positives in y_true: there is no precision-recall curve to draw")
    n_rows, n_cols = math.ceil(len(shown) / n_cols), min(n_cols, len(shown))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.2 * n_rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, c in zip(axes.flat, shown):
        recall, precision = precision_recall_steps(y_true[:, c], np.asarray(y_score)[:, c])
        ax.plot(recall, precision, drawstyle="steps-pre")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.05), title=f"{classes[c]} (AP {ap[c]:.2f})")
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=6)
    fig.supxlabel("recall", fontsize=9)
    fig.supylabel("precision", fontsize=9)
    return _save(fig, path)


def confusion_counts(per_class: dict[str, dict], path: str | Path) -> Path:
    """tp/fp/fn/tn per class as an annotated heatmap. Colour is each count's share of its row,
    so that rare and common classes read on the same scale."""
    names = list(per_class)
    counts = np.array([[per_class[name][column] for column in _COUNT_COLUMNS] for name in names], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 0.3 * len(names) + 1.2))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (row, col), count in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            f"{count:.0f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if shares[row, col] > 0.6 else "black",
        )
    ax.set_xticks(range(len(_COUNT_COLUMNS)), _COUNT_COLUMNS)
    ax.set_yticks(range(len(names)), names)
    ax.xaxis.tick_top()
    return _save(fig, path)


def prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_score: np.ndarray,
    thresholds: float | np.ndarray,
    classes: list[str],
    path: str | Path,
    max_images: int = 16,
) -> Path:
    """Sample images with their predicted labels under each one: green when correct, red when
    wrong. True labels the model missed follow in grey after "missed:"."""
    images = np.asarray(images)[:max_images]
    if images.shape[0] == 0:
        raise ValueError("no images to draw: pass at least one (H, W, 3) uint8 image")
    y_true = np.asarray(y_true, dtype=bool)[: len(images)]
    y_pred = apply_thresholds(np.asarray(y_score)[: len(images)], thresholds)
    n_cols = min(4, len(images))
    n_rows = math.ceil(len(images) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 3.4 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, predicted in zip(axes.flat, images, y_true, y_pred):
        ax.imshow(image)
        lines = [(classes[c], "green" if truth[c] else "red") for c in np.flatnonzero(predicted)]
        missed = [classes[c] for c in np.flatnonzero(truth & ~predicted)]
        if missed:
            lines.append(("missed: " + ", ".join(missed), "dimgray"))
        for i, (text, colour) in enumerate(lines or [("(no labels predicted)", "dimgray")]):
            ax.text(0, -0.04 - 0.09 * i, text, color=colour, fontsize=7, transform=ax.transAxes, va="top")
    fig.subplots_adjust(hspace=0.6)
    return _save(fig, path)
