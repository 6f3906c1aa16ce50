"""The served graph's two views in one batch (models.BothViews) against one call per view.

The photo recipe serves a MobileNetV2 fine-tuned at 224 px plus a linear probe on a second,
frozen MobileNetV2 that reads the photos at 384 px, each averaged over the image and its mirror
image. Until 2026-12-07 the graph called each member once per view (`MirrorImage` then Keras'
`Average`: the baseline below, the code as it was); now each member runs once over a batch of
both views (`BothViews`, `ViewMean`). The gate converts the graph to TFLite for every candidate
that can serve, so this measures that conversion, plus the served answers (must be identical up
to float rounding) and TFLite latency at batch 1 and 8, both graphs built from the same weights
in the same process, conversions alternating (the fastest of each counts).

    .venv/bin/python bench/export_views.py              # the recipe's graph, each converted twice (about 3 min on 2 cores)
    .venv/bin/python bench/export_views.py --repeat 4   # four times each
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "export_views.json"


def per_view_calls(network, probe, network_weight: float):
    """The served graph as models.with_sigmoid built it before BothViews: each member called on the
    image and on its mirror image, the two logits averaged."""
    import keras
    from keras import layers

    from multitag.modeling.models import MirrorImage

    inputs = keras.Input(network.input_shape[1:], name="image")
    views = [inputs, MirrorImage(name="mirror")(inputs)]

    def member(model, name):
        return layers.Average(name=f"{name}_views", dtype="float32")([model(view) for view in views])

    shares = [
        layers.Rescaling(network_weight, name="network_share")(member(network, "network")),
        layers.Rescaling(1.0 - network_weight, name="probe_share")(member(probe, "probe")),
    ]
    logits = layers.Add(name="ensemble_logits", dtype="float32")(shares)
    return keras.Model(inputs, layers.Activation("sigmoid", name="probabilities", dtype="float32")(logits), name="multitag")


def recipe_members(size: int, probe_size: int, classes: int):
    """The photo recipe's two members, untrained (`weights: null`): the graph and its conversion
    are the same whatever values its weights hold."""
    from multitag.modeling import models

    extractor = models.build_feature_extractor("mobilenetv2", size, None)
    network = models.assemble(extractor, models.build_head(int(extractor.output_shape[-1]), classes, [], 0.0))
    features = models.probe_features(models.build_feature_extractor("mobilenetv2", probe_size, None), size)
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.05, (int(features.output_shape[-1]), classes)).astype("float32")
    return network, models.probe_branch(features, kernel, rng.normal(0, 0.1, classes).astype("float32"))


def latency_ms(path: Path, batch: np.ndarray, runs: int) -> float:
    from multitag.lifecycle.tflite import TFLiteModel

    model = TFLiteModel(path)
    model.predict_on_batch(batch)
    started = time.perf_counter()
    for _ in range(runs):
        model.predict_on_batch(batch)
    return (time.perf_counter() - started) / runs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--probe-size", type=int, default=384)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2, help="conversions of each graph, alternating; the fastest counts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from multitag.lifecycle import export
    from multitag.lifecycle.tflite import TFLiteModel
    from multitag.modeling import models

    network, probe = recipe_members(args.size, args.probe_size, args.classes)
    graphs = {"per-view calls (baseline)": per_view_calls(network, probe, 0.3)}
    graphs["both views in one batch (project)"] = models.with_sigmoid(network, True, probe, 0.3)
    images = np.random.default_rng(1).integers(0, 256, (8, args.size, args.size, 3)).astype("float32")
    keras_answers = {name: np.asarray(model.predict_on_batch(images)) for name, model in graphs.items()}
    paths = {name: Path(tempfile.mkdtemp()) / "model.tflite" for name in graphs}
    seconds = {name: float("inf") for name in graphs}
    for attempt in range(args.repeat):  # alternating, so that neither pays the first conversion's warm-up every time
        for name in list(graphs)[:: 1 if attempt % 2 == 0 else -1]:
            started = time.perf_counter()
            export.to_tflite(graphs[name], paths[name])
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    results = {}
    for name, path in paths.items():
        exported = TFLiteModel(path).predict_on_batch(images)
        results[name] = {
            "convert_s": round(seconds[name], 1),
            "tflite_bytes": path.stat().st_size,
            "latency_ms_batch1": round(latency_ms(path, images[:1], 10), 1),
            "latency_ms_batch8": round(latency_ms(path, images, 3), 1),
            "max_export_vs_keras": float(np.abs(exported - keras_answers[name]).max()),
        }
        print(name, results[name], flush=True)
    baseline, project = results.values()
    summary = {
        "conversion_ratio": round(baseline["convert_s"] / project["convert_s"], 2),
        "max_answer_difference_between_graphs": float(np.abs(np.subtract(*keras_answers.values())).max()),
    }
    print(
        f"conversion: {baseline['convert_s']} s -> {project['convert_s']} s ({summary['conversion_ratio']}x faster); "
        f"the two graphs' answers differ by at most {summary['max_answer_difference_between_graphs']:.1e}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results, **summary}, indent=2))


if __name__ == "__main__":
    main()
