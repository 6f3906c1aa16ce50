"""Micro-batching: /predict requests that arrive together share one model call.

Each request is decoded on its own, in the threadpool, then handed to one worker thread that
makes the model calls. The worker takes the oldest waiting request and every later one for the
same model that fits beside it (`serve.batch_max_size` images in all), and makes ONE
`Predictor.predict_arrays` call for them.

When to start a call (the waiting policy): the worker never waits for traffic that may or may
not come. It waits only for requests it knows are on their way: each /predict request counts as
*arriving* from the moment its files are read until its images are decoded and queued. So

- a lone request (nothing else arriving) starts a model call at once, paying no window at all;
- requests that queued while the model was busy all go into the next call (no waiting needed);
- a call waits for requests still being decoded, but never longer than `serve.batch_max_wait_ms`
  after its oldest request was queued, and not once the batch is full (`batch_max_wait_ms: 0`:
  never; only requests that queued while the model was busy share a call).

Hot reload: a request names the Predictor it read from the watcher, and a batch only ever holds
requests for one Predictor object, so each answer comes from the model version it reports.
A failed model call fails the requests of that call with its error; the worker goes on.

Multi-image requests go through the batcher as one unit (never split over two calls), so all
model calls of a server are made one at a time by the worker; a request with more images than
`batch_max_size` gets a call of its own. `batch_max_size: 1` turns micro-batching off: every
request then decodes and makes its own model call in the threadpool, as before batching.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi.concurrency import run_in_threadpool

from multitag.config import ServeParams
from multitag.lifecycle.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    """One request's decoded images, queued for a model call, and where its scores go."""

    predictor: Predictor
    images: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Arrival:
    """A request on its way to the batcher (being decoded): the worker waits for it, up to the window."""

    def __init__(self, batcher: MicroBatcher):
        self._batcher = batcher
        self.submitted = False

    def submit(self, predictor: Predictor, images: np.ndarray) -> Future[np.ndarray]:
        """Queue this request's images; its arrival ends in the same step, so the worker never misses it."""
        if self.submitted:
            raise RuntimeError("this request was already submitted")
        future = self._batcher._enqueue(predictor, images, arrived=True)
        self.submitted = True  # only now: a refused submission still ends the arrival (see `arriving`)
        return future


class MicroBatcher:
    """Groups requests into model calls of at most `max_batch` images, made by one worker thread."""

    def __init__(self, max_batch: int, max_wait_s: float):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._changed = threading.Condition()  # guards everything below; notified on every change
        self._waiting: list[_Waiting] = []
        self._arriving = 0
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="micro-batcher", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def close(self) -> None:
        """Answer every queued request, then stop the worker; later submissions raise."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=60)

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Count one request as on its way while it is decoded; it stops counting when it submits or gives up."""
        arrival = Arrival(self)
        with self._changed:
            self._arriving += 1
        try:
            yield arrival
        finally:
            if not arrival.submitted:  # decoding failed: the worker must not wait for it
                with self._changed:
                    self._arriving -= 1
                    self._changed.notify_all()

    def submit(self, predictor: Predictor, images: np.ndarray) -> Future[np.ndarray]:
        """Queue (N, S, S, 3) uint8 images for `predictor`; the future gets their (N, C) scores (thread-safe)."""
        return self._enqueue(predictor, images, arrived=False)

    def waiting(self) -> int:
        """Requests queued for a model call right now (a gauge for monitoring and tests)."""
        with self._changed:
            return len(self._waiting)

    def _enqueue(self, predictor: Predictor, images: np.ndarray, arrived: bool) -> Future[np.ndarray]:
        request = _Waiting(predictor, images)
        with self._changed:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed: the server is shutting down")
            self._waiting.append(request)
            if arrived:
                self._arriving -= 1
            self._changed.notify_all()
        return request.future

    def _work(self) -> None:
        """The worker: batch after batch until closed and drained. Never raises (see `_score`)."""
        while batch := self._next_batch():
            self._score(batch)

    def _next_batch(self) -> list[_Waiting]:
        """Block until a request waits, wait for arriving ones as the policy says, then take a batch ([] once closed and drained)."""
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if not self._waiting:
                return []
            deadline = self._waiting[0].queued_at + self.max_wait_s
            while self._arriving and not self._closed and self._queued_images() < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._take_batch()

    def _queued_images(self) -> int:
        return sum(len(request.images) for request in self._waiting)

    def _take_batch(self) -> list[_Waiting]:
        """The oldest request and the later ones for the same Predictor that fit beside it.

        The rest keep their order; the oldest of them leads the next batch, so none starves.
        """
        first, size = self._waiting[0], 0
        batch: list[_Waiting] = []
        rest: list[_Waiting] = []
        for request in self._waiting:
            fits = not batch or size + len(request.images) <= self.max_batch
            if request.predictor is first.predictor and fits:
                batch.append(request)
                size += len(request.images)
            else:
                rest.append(request)
        self._waiting = rest
        return batch

    def _score(self, batch: list[_Waiting]) -> None:
        """ONE model call for the batch, each request getting its own rows; an error fails this batch only."""
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]  # drop cancelled
        if not live:
            return
        sizes = [len(request.images) for request in live]
        try:
            scores = live[0].predictor.predict_arrays(np.concatenate([request.images for request in live]))
            if len(scores) != sum(sizes):
                raise ValueError(f"the model returned {len(scores)} rows for {sum(sizes)} images")
        except Exception as err:
            log.warning("a model call for %d request(s) failed: %s: %s", len(live), type(err).__name__, err)
            for request in live:
                request.future.set_exception(err)
            return
        for request, rows in zip(live, np.split(scores, np.cumsum(sizes)[:-1])):
            request.future.set_result(rows)


def batcher_for(limits: ServeParams) -> MicroBatcher | None:
    """The server's micro-batcher, or None when `serve.batch_max_size` is 1 (batching off)."""
    if limits.batch_max_size <= 1:
        return None
    return MicroBatcher(limits.batch_max_size, limits.batch_max_wait_ms / 1000)


async def score(batcher: MicroBatcher | None, predictor: Predictor, decode: Callable[[], np.ndarray]) -> np.ndarray:
    """One request's (N, C) scores: its images decoded in the threadpool, then scored in a shared model
    call (or, with batching off, in a model call of its own in the threadpool, as before batching)."""
    if batcher is None:
        return await run_in_threadpool(lambda: predictor.predict_arrays(decode()))
    with batcher.arriving() as arrival:
        images = await run_in_threadpool(decode)
        future = arrival.submit(predictor, images)
    return await asyncio.wrap_future(future)
