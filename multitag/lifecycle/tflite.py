"""A `.tflite` export run by TensorFlow Lite's interpreter (XNNPACK, its default CPU delegate)
behind the one method every consumer calls on a Keras model, `predict_on_batch`, so the
Predictor, the gate's scoring and `modeling.evaluate.predict` take either without a branch.

Images run one at a time through a fixed (1, S, S, 3) input. Measured on 2 shared CPU cores
(bench/README.md, "Serving runtime"): a batch of N costs what N single-image calls cost, because
XNNPACK gains nothing from batching there, while resizing the input to each new batch size
reallocates the interpreter's tensors. So the interpreter never reallocates and its memory stays
constant whatever the batch size.

The interpreter is not thread-safe: one lock makes each image's set-invoke-read atomic. Concurrent
callers (the API's threadpool, the micro-batcher's worker) interleave image by image, each reads
back only its own rows, and a small request is never stuck behind the whole of a large one.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np


class TFLiteModel:
    """A `.tflite` file that predicts like the Keras model it was exported from."""

    def __init__(self, path: Path, num_threads: int | None = None):
        """`num_threads`: the threads of each invoke, by default every core the process may use.

        Measured on 2 quiet cores with the VOC champion (MobileNetV2 + the 320 px probe): one
        interpreter with 2 threads scores 31 images/s, with 1 thread 15; two 1-thread interpreters
        side by side reach 29 on batches but keep a lone image at 15. One interpreter, all cores."""
        num_threads = num_threads or len(os.sched_getaffinity(0))
        # LiteRT's own package: the interpreter TensorFlow 2.21 deprecates its tf.lite copy for, the
        # same kernels (answers equal to the bit on the voc-real export), imported in 0.1 s where
        # TensorFlow takes 5. A process that serves an export never imports TensorFlow.
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        (source,) = self._interpreter.get_input_details()
        (target,) = self._interpreter.get_output_details()
        self._interpreter.resize_tensor_input(source["index"], [1, *source["shape"][1:]])
        self._interpreter.allocate_tensors()
        self._input, self._output = source["index"], target["index"]
        self.input_shape = (None, *(int(d) for d in source["shape"][1:]))
        self.output_shape = (None, int(target["shape"][-1]))
        self._lock = threading.Lock()

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 pixels 0-255 -> (N, C) float32 probabilities, as the Keras model."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        scores = np.empty((len(batch), self.output_shape[1]), dtype=np.float32)
        for row in range(len(batch)):
            with self._lock:
                self._interpreter.set_tensor(self._input, batch[row : row + 1])
                self._interpreter.invoke()
                scores[row] = self._interpreter.get_tensor(self._output)[0]
        return scores
