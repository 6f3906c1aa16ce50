"""The served graph: flip averaging and the probe ensemble are inside the model, so a model URI
alone serves them, and the saved file reproduces them exactly."""

from __future__ import annotations

import keras
import numpy as np

from multitag.modeling import models


def _members(size: int = 32, classes: int = 3, probe_size: int = 48):
    """A network and a probe that reads the images resized to `probe_size`."""
    keras.utils.set_random_seed(0)
    extractor = models.build_feature_extractor("small_cnn", size, None)
    logits = models.assemble(extractor, models.build_head(int(extractor.output_shape[-1]), classes, [], 0.0))
    frozen = models.probe_features(models.build_feature_extractor("small_cnn", probe_size, None), size)
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 0.1, (int(frozen.output_shape[-1]), classes)).astype("float32")
    bias = rng.normal(0, 0.1, classes).astype("float32")
    return logits, models.probe_branch(frozen, kernel, bias)


def test_the_served_ensemble_is_the_weighted_mean_of_its_members_logits_over_both_views(tmp_path):
    logits, probe = _members()
    served = models.with_sigmoid(logits, flip_average=True, probe=probe, network_weight=0.3)
    images = np.random.default_rng(2).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    mirrored = images[:, :, ::-1]
    sigmoid = lambda z: 1 / (1 + np.exp(-np.asarray(z, dtype="float64")))  # noqa: E731
    view_mean = {net.name: np.mean([net.predict_on_batch(view) for view in (images, mirrored)], axis=0) for net in (logits, probe)}
    expected = sigmoid(0.3 * view_mean[logits.name] + 0.7 * view_mean[probe.name])
    np.testing.assert_allclose(served.predict_on_batch(images), expected, rtol=1e-4, atol=1e-5)

    served.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(images), served.predict_on_batch(images), rtol=1e-5, atol=1e-6)
    assert not any(w.trainable for w in loaded.get_layer("probe_branch").weights), "the probe stays frozen"
    resize = loaded.get_layer("probe_branch").get_layer("probe_features").get_layer("probe_resize")
    assert tuple(resize.output.shape[1:3]) == (48, 48), "the probe reads the images at its own size"


def test_without_options_the_served_model_is_the_plain_sigmoid():
    logits, _ = _members()
    images = np.random.default_rng(3).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    plain = models.with_sigmoid(logits).predict_on_batch(images)
    np.testing.assert_allclose(plain, 1 / (1 + np.exp(-logits.predict_on_batch(images))), rtol=1e-4, atol=1e-6)


# -- scored member by member (modeling/ensemble.py), each member's outputs cached by content hash --


def _saved(tmp_path, name: str, served: keras.Model) -> keras.Model:
    """As evaluate meets a model: saved by training, loaded from its file."""
    served.save(tmp_path / f"{name}.keras")
    return keras.models.load_model(tmp_path / f"{name}.keras", compile=False)


def test_scores_member_by_member_equal_the_graphs_for_every_shape_the_project_serves(tmp_path):
    from multitag.modeling import ensemble

    logits, probe = _members()
    images = np.random.default_rng(4).integers(0, 255, (5, 32, 32, 3)).astype("uint8")
    shapes = {
        "ensemble": models.with_sigmoid(logits, flip_average=True, probe=probe, network_weight=0.3),
        "flip-only": models.with_sigmoid(logits, flip_average=True),
        "plain": models.with_sigmoid(logits),
        "probe, no flip": models.with_sigmoid(logits, probe=probe, network_weight=0.6),
    }
    for name, served in shapes.items():
        loaded = _saved(tmp_path, name.replace(" ", ""), served)
        for cache in (None, tmp_path / "cache"):
            scored = ensemble.scores(loaded, images, cache)
            np.testing.assert_allclose(scored, loaded.predict_on_batch(images.astype("float32")), rtol=1e-5, atol=1e-6, err_msg=name)
    assert ensemble.scores(logits, images, None) is None, "a model of another shape is left to the graph"


def test_a_refitted_probe_reuses_every_cached_member_output_and_a_new_network_never_reads_stale_ones(tmp_path):
    from multitag.modeling import ensemble

    cache = tmp_path / "cache"
    logits, probe = _members()
    images = np.random.default_rng(5).integers(0, 255, (6, 32, 32, 3)).astype("uint8")
    champion = _saved(tmp_path, "champion", models.with_sigmoid(logits, flip_average=True, probe=probe, network_weight=0.3))
    ensemble.scores(champion, images, cache)
    files = {path: path.stat().st_mtime_ns for path in cache.iterdir()}
    assert len(files) == 2, "one file per member: the network's logits, the probe's frozen features"

    # the quick path: the champion's network, a probe refitted on more photos
    kernel, bias = probe.get_layer("probe_logits").get_weights()
    refitted = models.probe_branch(probe.get_layer("probe_features"), kernel[:, ::-1].copy(), bias + 0.5)
    quick = _saved(tmp_path, "quick", models.with_sigmoid(logits, flip_average=True, probe=refitted, network_weight=0.3))
    np.testing.assert_allclose(
        ensemble.scores(quick, images, cache), quick.predict_on_batch(images.astype("float32")), rtol=1e-5, atol=1e-6
    )
    assert {path: path.stat().st_mtime_ns for path in cache.iterdir()} == files, "nothing was computed again"

    # a fine-tuned network: its logits are computed anew (a file of its own), the probe's features reused
    logits.get_layer(index=-1).set_weights([w + 0.1 for w in logits.get_layer(index=-1).get_weights()])
    nightly = _saved(tmp_path, "nightly", models.with_sigmoid(logits, flip_average=True, probe=refitted, network_weight=0.3))
    np.testing.assert_allclose(
        ensemble.scores(nightly, images, cache), nightly.predict_on_batch(images.astype("float32")), rtol=1e-5, atol=1e-6
    )
    assert len(list(cache.iterdir())) == 3
