"""Would the champion's probe member do better fitted on train+val, with cross-fitted thresholds?

Reads a project where `multitag pipeline --source voc --path ../shared/datasets/voc-real` has run
(its `data/processed` arrays and `models/mobilenetv2/model.keras`), computes once the network
member's flip-averaged logits and the probe's 384 px features of every photo, then compares on the
frozen test split, at network share `--network-weight` (the recipe's 0.3):

- shipped: the probe fitted on train, thresholds tuned on the model's validation scores;
- train+val: the probe fitted on train+val (C by 3-fold CV there); each validation photo's probe
  logit comes from a probe fitted on train plus the other val folds (cross-fitting), so the
  thresholds are tuned on scores from probes that never saw the photo.

It prints test mAP (classes with test positives), frequent-6 mAP, micro-F1 at the tuned thresholds
and labels per photo; numbers in bench/README.md. Writes bench/results/probe_crossfit.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

FREQUENT = ("cat", "cow", "dog", "horse", "person", "sheep")
FOLDS = 3


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def cached_members(project: Path, cache: Path) -> dict[str, np.ndarray]:
    """Network logits (flip-averaged) and 384 px probe features of every split, computed once."""
    if cache.exists():
        return dict(np.load(cache))
    import keras

    from multitag.data.preprocess import load_split
    from multitag.modeling import models
    from multitag.modeling.batches import flip_averaged_features

    network = keras.models.load_model(project / "models/mobilenetv2/model.keras", compile=False).get_layer("multitag_logits")
    frozen = models.build_feature_extractor("mobilenetv2", 384, "imagenet")
    frozen.trainable = False
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        x, y = load_split(project / "data/processed", split)
        features_model = models.probe_features(frozen, int(x.shape[1]))
        t0 = time.perf_counter()
        arrays[f"net_{split}"] = flip_averaged_features(network, x)
        arrays[f"feat_{split}"] = flip_averaged_features(features_model, x)
        arrays[f"y_{split}"] = np.asarray(y)
        print(f"{split}: {len(x)} photos in {time.perf_counter() - t0:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return arrays


def probe_logits(probes: list, features: np.ndarray) -> np.ndarray:
    """The probes' logits as the in-graph Dense layer gives them (-20 where a class has no probe)."""
    return np.column_stack([p.decision_function(features) if p is not None else np.full(len(features), -20.0) for p in probes])


def cross_fitted_val_logits(d: dict[str, np.ndarray], c: float, seed: int) -> np.ndarray:
    """Each val row's logit from a probe fitted on train plus the other val folds."""
    from sklearn.model_selection import KFold

    from multitag.modeling.baselines import fit_probe

    out = np.zeros(d["y_val"].shape)
    for fit_rows, score_rows in KFold(FOLDS, shuffle=True, random_state=seed).split(d["feat_val"]):
        features = np.concatenate([d["feat_train"], d["feat_val"][fit_rows]])
        labels = np.concatenate([d["y_train"], d["y_val"][fit_rows]])
        out[score_rows] = probe_logits(fit_probe(features, labels, c), d["feat_val"][score_rows])
    return out


def score(name: str, d: dict, classes: list[str], val_scores: np.ndarray, test_scores: np.ndarray) -> dict:
    from multitag.modeling import metrics

    thresholds = metrics.tune_thresholds(d["y_val"], val_scores, 8, 0.5, [0.1, 0.9])
    ap = metrics.average_precision_per_class(d["y_test"], test_scores)
    present = d["y_test"].sum(axis=0) > 0
    frequent = [classes.index(c) for c in FREQUENT]
    tuned = metrics.evaluate_at_thresholds(d["y_test"], test_scores, thresholds, classes)["tuned"]
    row = {
        "model": name,
        "test_mAP": float(np.nanmean(ap[present])),
        "frequent6_mAP": float(np.mean(ap[frequent])),
        "micro_f1": float(tuned["micro_f1"]),
        "labels_per_photo": float((test_scores >= thresholds).sum(axis=1).mean()),
    }
    print(
        f"{name:48s} mAP {row['test_mAP']:.4f}  f6 {row['frequent6_mAP']:.4f}  micro-F1 {row['micro_f1']:.4f}  labels {row['labels_per_photo']:.2f}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a checkout where the VOC pipeline has run")
    parser.add_argument("--network-weight", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("bench/results/probe_crossfit.json"))
    args = parser.parse_args()
    if not (args.project / "models/mobilenetv2/model.keras").exists():
        sys.exit(f"{args.project}/models/mobilenetv2/model.keras missing: run the VOC pipeline there first")
    from threadpoolctl import threadpool_limits

    from multitag.modeling.baselines import fit_probes

    classes = json.loads((args.project / "data/processed/classes.json").read_text())
    d = cached_members(args.project, Path("bench/results/probe_crossfit_cache.npz"))
    w = args.network_weight
    rows = []
    with threadpool_limits(1):
        shipped = fit_probes(d["feat_train"], d["y_train"], args.seed)
        val, test = (w * d[f"net_{s}"] + (1 - w) * probe_logits(shipped.probes, d[f"feat_{s}"]) for s in ("val", "test"))
        rows.append(score(f"probe on train (C={shipped.c})", d, classes, sigmoid(val), sigmoid(test)))
        both = fit_probes(np.concatenate([d["feat_train"], d["feat_val"]]), np.concatenate([d["y_train"], d["y_val"]]), args.seed)
        val = w * d["net_val"] + (1 - w) * cross_fitted_val_logits(d, both.c, args.seed)
        test = w * d["net_test"] + (1 - w) * probe_logits(both.probes, d["feat_test"])
        rows.append(score(f"probe on train+val, cross-fitted (C={both.c})", d, classes, sigmoid(val), sigmoid(test)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
