"""The served model exported to TensorFlow Lite (LiteRT), a CPU runtime built for inference,
served only once it is shown to answer like the Keras model it came from.

The export lives inside the logged model's own folder (`<model>/export/`), so a model URI alone
still serves it, and a registered version, whose source is that folder, carries it: `parity.json`
(the check's numbers) always, `model.tflite` only when parity held. The Predictor serves the file
only when the record says parity held for these exact bytes (sha256); anything else serves Keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from multitag.lifecycle.tflite import TFLiteModel
from multitag.modeling.metrics import average_precision_per_class

log = logging.getLogger(__name__)

RUNTIME = "tflite"
EXPORT_DIR = "export"  # inside the logged model's folder
EXPORT_FILE = "model.tflite"
RECORD_FILE = "parity.json"

# Tolerances against the Keras model's own scores on the frozen test split.
# Float32 TFLite with XNNPACK sums in another order and fuses ops: the largest probability
# difference measured was 6e-8 to 3e-6 (small_cnn, MobileNetV2 with ImageNet weights at 224 px
# with flips and the probe branch, EfficientNetB0, ResNet50), while a wrong trace (the nested
# networks in training mode: dropout, batch statistics) was off by 0.16 to 0.75. 1e-4 keeps a 30x
# margin over the noise and can change a label only for a score within 1e-4 of its threshold.
MAX_SCORE_DIFFERENCE = 1e-4
# Per class: a quarter of the noise of a class's AP on a few hundred test photos (the gate's bootstrap
# interval of the mAP gain is about +-0.03 there), and 3-4 orders of magnitude over what float32
# rounding moves (the score differences above): an export this close ranks like the model.
MAX_AP_DIFFERENCE = 0.005

CONVERTED = "converted"
REFITTED_PROBE = "the champion's export with the refitted probe's weights"


@dataclass(frozen=True)
class Parity:
    """Whether the export answers like the model on labelled images, and by how much it differs."""

    passed: bool
    images: int
    max_score_difference: float | None = None
    max_ap_difference: float | None = None
    worst_class: str | None = None  # the class whose AP moved most
    max_score_tolerance: float = MAX_SCORE_DIFFERENCE
    max_ap_tolerance: float = MAX_AP_DIFFERENCE
    sha256: str | None = None  # of the checked .tflite file: the Predictor serves only these bytes
    error: str | None = None  # why there is no number to compare (conversion failed, NaN scores)
    made: str = CONVERTED  # CONVERTED, or REFITTED_PROBE: the champion's export with the new probe weights

    def tags(self) -> dict[str, str]:
        """Flat version tags: the outcome and the numbers behind it."""
        out = {"export_parity": "passed" if self.passed else "failed", "export_made": self.made}
        if self.max_score_difference is not None:
            out["export_max_score_difference"] = f"{self.max_score_difference:.2e}"
        if self.max_ap_difference is not None:
            out["export_max_ap_difference"] = f"{self.max_ap_difference:.4f}"
        if self.error:
            out["export_error"] = self.error[:250]
        return out

    def summary(self) -> str:
        """One sentence for the gate report: what was measured and what serves because of it."""
        if self.error:
            return f"TFLite export: no parity ({self.error}); not logged, the API serves the Keras model."
        measured = (
            f"on {self.images} test images: max |score difference| {self.max_score_difference:.2e} "
            f"(tolerance {self.max_score_tolerance:.0e}), max |AP difference| {self.max_ap_difference:.4f}"
            f"{f' ({self.worst_class})' if self.worst_class else ''} (tolerance {self.max_ap_tolerance})"
        )
        if self.passed:
            return f"TFLite export ({self.made}): parity held {measured}; logged with the model, served through it (serve.runtime: auto)."
        return f"TFLite export: parity FAILED {measured}; not logged, the API serves the Keras model."


def to_tflite(model, path: Path) -> Path:
    """The whole served graph (flip views, probe branch and its in-graph resize) as float32 TFLite.

    Through Keras' own LiteRT exporter, which traces the model with `training=False`: the plain
    SavedModel export traced the nested networks in training mode here (dropout and batch
    statistics, scores off by up to 0.75). Builtin ops only and variables frozen, so the file runs
    whole on the interpreter and XNNPACK without TensorFlow's Flex ops; no quantisation, because
    parity with the model is the point.
    """
    import tensorflow as tf

    model.export(
        str(path),
        format="litert",
        verbose=False,
        target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
        experimental_enable_resource_variables=False,
    )
    return path


def check_parity(
    y_true: np.ndarray,
    reference: np.ndarray,
    exported: np.ndarray,
    classes: list[str],
    max_score_difference: float = MAX_SCORE_DIFFERENCE,
    max_ap_difference: float = MAX_AP_DIFFERENCE,
) -> Parity:
    """Do the export's (N, C) scores match the model's on these labelled images, within tolerance?

    Both the largest score difference and the largest per-class AP difference must hold: the first
    bounds every answer, the second what the gate measures. A NaN or infinite score fails.
    """
    reference, exported = np.asarray(reference, dtype="float64"), np.asarray(exported, dtype="float64")
    tolerances = {"max_score_tolerance": max_score_difference, "max_ap_tolerance": max_ap_difference}
    if exported.shape != reference.shape:
        return Parity(False, len(reference), error=f"the export answers {exported.shape}, the model {reference.shape}", **tolerances)
    if not np.isfinite(exported).all():
        return Parity(False, len(reference), error="the export gives NaN or infinite scores", **tolerances)
    score_gap = float(np.abs(exported - reference).max())
    ap_gaps = np.abs(average_precision_per_class(y_true, exported) - average_precision_per_class(y_true, reference))
    ap_gap = float(np.nanmax(ap_gaps, initial=0.0))  # NaN: a class without positives has no AP in either
    worst = classes[int(np.nanargmax(ap_gaps))] if ap_gap > 0 else None
    passed = score_gap <= max_score_difference and ap_gap <= max_ap_difference
    return Parity(passed, len(reference), score_gap, ap_gap, worst, **tolerances)


@dataclass(frozen=True)
class Base:
    """A model with a checked export (the champion), which a model differing only in its probe's
    weights (a quick refit of it) can be exported from (`refitted_probe_export`)."""

    model: object  # keras.Model
    export: Path


def refitted_probe_export(model, base: Base) -> bytes | None:
    """The export of `model` made from `base`'s: its bytes with the probe's Dense weights written
    over the base's. A quick refit (retrain --quick) changes only those, and this takes a second
    where converting the whole graph takes ~50 s on 2 cores. None unless every other weight is
    the base's and each old weight array occurs exactly once in the file; the parity check then
    proves the result like any export (export_checked)."""
    from multitag.modeling.ensemble import members
    from multitag.modeling.feature_cache import weights_digest

    new, old = members(model), members(base.model)
    if new is None or old is None or new.probe_features is None or old.probe_features is None:
        return None
    same = (new.flip, new.network_weight, weights_digest(new.network), weights_digest(new.probe_features)) == (
        old.flip,
        old.network_weight,
        weights_digest(old.network),
        weights_digest(old.probe_features),
    )
    if not same:
        return None
    data = base.export.read_bytes()
    for before, after in ((old.probe_kernel.T, new.probe_kernel.T), (old.probe_bias, new.probe_bias)):
        before_bytes, after_bytes = (np.ascontiguousarray(a, dtype="float32").tobytes() for a in (before, after))
        if data.count(before_bytes) != 1 or len(before_bytes) != len(after_bytes):
            return None
        data = data.replace(before_bytes, after_bytes)
    return data


def export_checked(
    model, images: np.ndarray, y_true: np.ndarray, reference: np.ndarray, classes: list[str], folder: Path, base: Base | None = None
) -> Parity:
    """Export `model` into `folder` (from `base`'s export where `refitted_probe_export` can, else
    converted), score `images` through the export, check parity.

    A conversion that fails is a failed check with its reason, never a failed gate: the export
    only speeds serving up, and without it the Keras model serves as before. A derived export
    that fails its check is replaced by a conversion.
    """
    path = folder / EXPORT_FILE
    derived = refitted_probe_export(model, base) if base is not None else None
    if derived is not None:
        path.write_bytes(derived)
        try:
            parity = scored_parity(path, images, y_true, reference, classes)
        except Exception as err:  # the interpreter refused the file: convert instead
            parity = Parity(False, len(images), error=f"{type(err).__name__}: {err}")
        if parity.passed:
            return replace(parity, made=REFITTED_PROBE)
        log.warning("the export made from the champion's failed its parity check (%s); converting instead", parity.summary())
    try:
        return scored_parity(to_tflite(model, path), images, y_true, reference, classes)
    except Exception as err:  # any converter or interpreter failure: no export, Keras serves
        log.warning("the TFLite export failed; the Keras model will serve", exc_info=True)
        first_line = (str(err).strip().splitlines() or [""])[0]
        return Parity(False, len(images), error=f"{type(err).__name__}: {first_line}")


def scored_parity(path: Path, images: np.ndarray, y_true: np.ndarray, reference: np.ndarray, classes: list[str]) -> Parity:
    """Score `images` through the export at `path` and check it against the `reference` scores."""
    from multitag.modeling.evaluate import predict  # imports Keras: only where a model is exported

    exported = predict(TFLiteModel(path), images)
    return replace(check_parity(y_true, reference, exported, classes), sha256=file_sha256(path))


def publish(model_uri: str, folder: Path, parity: Parity) -> None:
    """Record the check in the logged model's folder; add the export itself only when it held.

    The record is written last and always, so a later failed check of the same model (a gate run
    again) overrides an earlier export instead of leaving it to serve.
    """
    from multitag.lifecycle.tracking import log_model_files

    (folder / RECORD_FILE).write_text(json.dumps(asdict(parity), indent=1) + "\n")
    export = [folder / EXPORT_FILE] if parity.passed else []
    log_model_files(model_uri, [*export, folder / RECORD_FILE], EXPORT_DIR)


def export_for_serving(
    model, model_uri: str, images: np.ndarray, y_true: np.ndarray, reference: np.ndarray, classes: list[str], base: Base | None = None
) -> Parity:
    """Export the logged model at `model_uri` (from `base`'s export where it can: export_checked),
    check it against the model's `reference` scores on the labelled `images`, and publish the
    outcome into the model's folder (export.py's docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        parity = export_checked(model, images, y_true, reference, classes, Path(tmp), base)
        publish(model_uri, Path(tmp), parity)
    log.info("%s", parity.summary())
    return parity


def served_export(model_folder: Path) -> Path | None:
    """The export to serve from a logged model's folder: a file whose recorded check passed for
    these exact bytes, else None (never exported, parity failed, or the file changed since)."""
    path, record = model_folder / EXPORT_DIR / EXPORT_FILE, model_folder / EXPORT_DIR / RECORD_FILE
    if not (path.exists() and record.exists()):
        return None
    checked = json.loads(record.read_text())
    return path if checked.get("passed") and checked.get("sha256") == file_sha256(path) else None


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
