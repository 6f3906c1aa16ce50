"""Micro-batching: requests that arrive together share one model call, each caller still gets
exactly its own scores, a call never holds more than `batch_max_size` images or two models, a
failed call fails only its own requests, and a lone request never waits for company.

The batcher is always the real one, on the tiny registered model; the model inside the Predictor
is wrapped in a `GatedModel` that records every call and can hold the first call while the test
queues more requests, so grouping is decided by what is queued, not by timing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from corpus import noise

from multitag.config import ServeParams
from multitag.lifecycle import registry
from multitag.lifecycle.predictor import Predictor
from multitag.serving.batching import MicroBatcher, batcher_for

POISON = 13  # an image of only this value makes the model call it is in fail


class GatedModel:
    """A Keras model wrapped to record each call's batch, hold calls until `release`, and fail a
    call that holds a poisoned image."""

    def __init__(self, model: object, held: bool = False):
        self.model = model
        self.calls: list[np.ndarray] = []
        self.entered = threading.Event()
        self.released = threading.Event()
        if not held:
            self.released.set()

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(images))
        self.entered.set()
        assert self.released.wait(30), "the test never released the held model call"
        if (images == POISON).all(axis=(1, 2, 3)).any():
            raise ValueError("poisoned image in this batch")
        return self.model.predict_on_batch(images)

    def call_sizes(self) -> list[int]:
        return [len(batch) for batch in self.calls]

    def rows_seen(self) -> set[bytes]:
        return {row.astype("float32").tobytes() for batch in self.calls for row in batch}


def gated(predictor: Predictor, held: bool = False) -> tuple[Predictor, GatedModel]:
    """A new Predictor object (as a reload makes) around the same weights, its model wrapped."""
    model = GatedModel(predictor.model, held)
    return dataclasses.replace(predictor, model=model), model


def images(seed: int, count: int, size: int, value: int | None = None) -> np.ndarray:
    """`count` random uint8 images (or all `value`), distinct per seed."""
    if value is not None:
        return np.full((count, size, size, 3), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def eventually(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tiny_predictor(tiny_champion) -> Predictor:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tiny_champion.env.items():
            patch.setenv(key, value)
        return Predictor.from_uri(tiny_champion.model_uri)


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., MicroBatcher]]:
    """`make_batcher(max_batch, max_wait_s)`: started batchers, all closed in teardown."""
    started: list[MicroBatcher] = []

    def make(max_batch: int = 8, max_wait_s: float = 0.005) -> MicroBatcher:
        started.append(MicroBatcher(max_batch, max_wait_s))
        started[-1].start()
        return started[-1]

    yield make
    for batcher in started:
        batcher.close()


def busy(batcher: MicroBatcher, predictor: Predictor, model: GatedModel) -> Future:
    """Start a held model call for one image, so that the next requests queue behind it."""
    first = batcher.submit(predictor, images(999, 1, predictor.input_size))
    assert model.entered.wait(30)
    return first


def assert_own_scores(reference: Predictor, sent: np.ndarray, got: np.ndarray) -> None:
    """`got` is what the model gives for exactly these images, scored on their own."""
    np.testing.assert_allclose(got, reference.predict_arrays(sent), rtol=1e-5, atol=1e-6)


# -- grouping and answers -----------------------------------------------------------------------


def test_requests_queued_while_the_model_is_busy_share_the_next_call(make_batcher, tiny_predictor):
    batcher = make_batcher(max_batch=8)
    predictor, model = gated(tiny_predictor, held=True)
    first = busy(batcher, predictor, model)
    sent = [images(seed, 1, predictor.input_size) for seed in range(4)]
    futures = [batcher.submit(predictor, request) for request in sent]
    model.released.set()

    assert first.result(timeout=30).shape == (1, len(predictor.classes))
    for request, future in zip(sent, futures):
        assert_own_scores(tiny_predictor, request, future.result(timeout=30))
    assert model.call_sizes() == [1, 4]  # the four queued requests: one call, not four


def test_a_call_never_holds_more_than_max_batch_images_nor_splits_a_request(make_batcher, tiny_predictor):
    batcher = make_batcher(max_batch=3)
    predictor, model = gated(tiny_predictor, held=True)
    busy(batcher, predictor, model)
    sent = [images(seed, count, predictor.input_size) for seed, count in enumerate([2, 2, 1, 3, 4, 1])]
    futures = [batcher.submit(predictor, request) for request in sent]
    model.released.set()

    for request, future in zip(sent, futures):
        assert_own_scores(tiny_predictor, request, future.result(timeout=30))
    sizes = model.call_sizes()[1:]
    assert sum(sizes) == 13 and 4 in sizes  # the 4-image request: alone, in one call
    assert all(size <= 3 for size in sizes if size != 4), sizes
    assert len(sizes) < len(sent), "requests that fit together share calls"


def test_a_lone_request_is_scored_at_once_not_after_the_window(make_batcher, tiny_predictor):
    batcher = make_batcher(max_wait_s=60)
    with batcher.arriving() as arrival:
        future = arrival.submit(tiny_predictor, images(1, 1, tiny_predictor.input_size))
    assert future.result(timeout=20).shape == (1, len(tiny_predictor.classes))  # not 60 s later


def test_the_worker_waits_for_requests_still_being_decoded(make_batcher, tiny_predictor):
    batcher = make_batcher(max_wait_s=60)
    predictor, model = gated(tiny_predictor)
    sent = [images(seed, 1, predictor.input_size) for seed in (1, 2)]
    with batcher.arriving() as first, batcher.arriving() as second:
        futures = [first.submit(predictor, sent[0])]
        time.sleep(0.3)  # a worker that did not wait for `second` would have scored the first alone by now
        futures.append(second.submit(predictor, sent[1]))
    for request, future in zip(sent, futures):
        assert_own_scores(tiny_predictor, request, future.result(timeout=30))
    assert model.call_sizes() == [2]


def test_a_request_that_fails_to_decode_is_not_waited_for(make_batcher, tiny_predictor):
    batcher = make_batcher(max_wait_s=60)
    with batcher.arriving() as arrival:
        with pytest.raises(ValueError), batcher.arriving():
            raise ValueError("undecodable upload")
        future = arrival.submit(tiny_predictor, images(1, 1, tiny_predictor.input_size))
    assert future.result(timeout=20).shape == (1, len(tiny_predictor.classes))  # not 60 s later


# -- failures, reloads, shutdown ----------------------------------------------------------------


def test_a_failing_model_call_fails_only_its_batch_and_the_worker_goes_on(make_batcher, tiny_predictor):
    batcher = make_batcher(max_batch=2)
    predictor, model = gated(tiny_predictor, held=True)
    size = predictor.input_size
    first = busy(batcher, predictor, model)
    doomed = [batcher.submit(predictor, images(1, 1, size)), batcher.submit(predictor, images(0, 1, size, value=POISON))]
    spared = [images(seed, 1, size) for seed in (2, 3)]
    spared_futures = [batcher.submit(predictor, request) for request in spared]
    model.released.set()

    first.result(timeout=30)
    for future in doomed:
        with pytest.raises(ValueError, match="poisoned image"):
            future.result(timeout=30)
    for request, future in zip(spared, spared_futures):
        assert_own_scores(tiny_predictor, request, future.result(timeout=30))
    later = images(4, 1, size)
    assert_own_scores(tiny_predictor, later, batcher.submit(predictor, later).result(timeout=30))
    assert model.call_sizes() == [1, 2, 2, 1]


def test_a_batch_only_holds_requests_for_one_predictor(make_batcher, tiny_predictor):
    """After a reload, requests that read the old Predictor and the new one are queued together."""
    batcher = make_batcher(max_batch=8)
    old, old_model = gated(tiny_predictor, held=True)
    new, new_model = gated(tiny_predictor)
    busy(batcher, old, old_model)
    order = [old, new, old, new, new]
    sent = [images(seed, 1, old.input_size) for seed in range(len(order))]
    futures = [batcher.submit(predictor, request) for predictor, request in zip(order, sent)]
    old_model.released.set()

    for request, future in zip(sent, futures):
        assert_own_scores(tiny_predictor, request, future.result(timeout=30))
    sent_to = {id(p): {r.astype("float32").tobytes() for q, r in zip(order, sent) if q is p} for p in (old, new)}
    assert old_model.rows_seen() - {images(999, 1, old.input_size).astype("float32").tobytes()} == sent_to[id(old)]
    assert new_model.rows_seen() == sent_to[id(new)]
    assert (old_model.call_sizes(), new_model.call_sizes()) == ([1, 2], [3])


def test_close_answers_what_is_queued_then_refuses_more(tiny_predictor):
    batcher = MicroBatcher(8, 0.005)
    batcher.start()
    predictor, model = gated(tiny_predictor, held=True)
    futures = [busy(batcher, predictor, model), batcher.submit(predictor, images(1, 2, predictor.input_size))]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    model.released.set()
    closing.join(timeout=30)

    assert not closing.is_alive() and all(future.done() and future.exception() is None for future in futures)
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(predictor, images(2, 1, predictor.input_size))


def test_batch_max_size_1_turns_batching_off():
    assert batcher_for(ServeParams(batch_max_size=1)) is None
    batcher = batcher_for(ServeParams(batch_max_size=6, batch_max_wait_ms=3))
    assert (batcher.max_batch, batcher.max_wait_s) == (6, 0.003)


# -- over HTTP: the server's /predict -------------------------------------------------------------


def post(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", (name, data, "image/png"))], timeout=60)


def test_concurrent_single_image_requests_share_a_model_call_and_each_gets_its_own_answer(registry_env, live_server, serve_params):
    server = live_server(serve_params(registry_env.name, batch_max_size=8))
    services = server.app.state.services
    served = services.watcher.current
    original = dataclasses.replace(served.predictor)
    model = GatedModel(served.predictor.model, held=True)
    served.predictor.model = model
    uploads = [(f"photo{i}.png", noise("PNG", seed=i, size=40)) for i in range(6)]

    with ThreadPoolExecutor(len(uploads)) as pool:
        responses = [pool.submit(post, server.url, *uploads[0])]
        assert model.entered.wait(30)
        responses += [pool.submit(post, server.url, *upload) for upload in uploads[1:]]
        eventually(lambda: services.batcher.waiting() == len(uploads) - 1)
        model.released.set()
        answers = [future.result() for future in responses]

    assert model.call_sizes() == [1, 5]
    for (name, data), response in zip(uploads, answers):
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        (own,) = original.predict_bytes([data])
        assert (answer["filename"], answer["image_sha256"], answer["model_version"]) == (name, own.image_sha256, registry_env.version)
        np.testing.assert_allclose(list(answer["probabilities"].values()), list(own.probabilities.values()), rtol=1e-5, atol=1e-6)
        assert answer["labels"] == own.labels


def test_a_reload_mid_stream_never_mixes_versions_and_each_answer_names_its_scorer(
    registry_env, fresh_model_name, live_server, serve_params
):
    first = registry.register(registry_env.model_uri, fresh_model_name, {})
    registry.promote(fresh_model_name, first)
    server = live_server(serve_params(fresh_model_name, batch_max_size=16))
    services = server.app.state.services
    old_model = GatedModel(services.watcher.current.predictor.model, held=True)
    services.watcher.current.predictor.model = old_model
    uploads = [(f"stream{i}.png", noise("PNG", seed=10 + i, size=40)) for i in range(5)]

    with ThreadPoolExecutor(len(uploads)) as pool:
        responses = [pool.submit(post, server.url, *uploads[0])]
        assert old_model.entered.wait(30)
        responses += [pool.submit(post, server.url, *upload) for upload in uploads[1:3]]
        eventually(lambda: services.batcher.waiting() == 2)
        second = registry.register(registry_env.model_uri, fresh_model_name, {})
        registry.promote(fresh_model_name, second)
        eventually(lambda: services.watcher.current.version.version == second)
        new_model = GatedModel(services.watcher.current.predictor.model)
        services.watcher.current.predictor.model = new_model
        responses += [pool.submit(post, server.url, *upload) for upload in uploads[3:]]
        eventually(lambda: services.batcher.waiting() == 4)  # old and new requests queued together
        old_model.released.set()
        versions = [future.result().json()["predictions"][0]["model_version"] for future in responses]

    assert versions == [first] * 3 + [second] * 2
    # each model scored only its own requests; the new version may also re-score the stored photos
    # of the old requests (the re-scorer, in the background), never the old model the new requests
    predictor = services.watcher.current.predictor
    rows = [predictor.decode(data).astype("float32").tobytes() for _, data in uploads]
    assert old_model.call_sizes() == [1, 2] and old_model.rows_seen() == set(rows[:3])
    assert set(rows[3:]) <= new_model.rows_seen() <= set(rows)
