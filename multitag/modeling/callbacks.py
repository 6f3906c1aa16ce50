"""What each training epoch reports: the validation mAP that early stopping follows, and a
progress line (phase, epoch, loss, val mAP, time left) for whoever watches a long run."""

from __future__ import annotations

import sys
import time

import keras
import numpy as np

from multitag.modeling.metrics import average_precision_per_class


class ValidationMAP(keras.callbacks.Callback):
    """Adds `val_mAP` to the epoch logs so early stopping and checkpoints follow the real goal."""

    def __init__(self, inputs, y_val: np.ndarray, batch_size: int):
        super().__init__()
        self.inputs, self.y_val, self.batch_size = inputs, y_val, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.model.predict(self.inputs, batch_size=self.batch_size, verbose=0)
        if logs is not None:
            logs["val_mAP"] = float(np.nanmean(average_precision_per_class(self.y_val, scores)))


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch (phase, epoch, loss, val mAP, time left), so a long run can be followed."""

    def __init__(self, label: str, epochs: int):
        super().__init__()
        self.label, self.epochs = label, epochs
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        per_epoch = (time.perf_counter() - self.started) / (epoch + 1)
        left = per_epoch * (self.epochs - epoch - 1)
        report(
            f"{self.label} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f}, "
            f"val mAP {logs.get('val_mAP', float('nan')):.4f}, {per_epoch:.0f} s/epoch, at most {left:.0f} s left in this phase"
        )


def report(message: str) -> None:
    """Progress to stderr, flushed: training runs in a child process whose output the user sees."""
    print(f"[train] {message}", file=sys.stderr, flush=True)
