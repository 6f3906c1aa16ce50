"""TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()", the
oneDNN and CPU-feature notes) are printed while it loads, before any log level can apply, twice
per process, and TFLite announces its XNNPACK delegate. Everyday commands (`predict`, `tag`) load
their model inside `tensorflow_quietly`, so a person reads their answer, not the runtime's banner;
a load that fails still shows every line it printed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stderr_held() -> Iterator[None]:
    """Send file descriptor 2 (what C++ writes to) to a temporary file for the block; replay it on
    failure. Python's own sys.stderr is flushed first, so nothing of ours is held."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextmanager
def tensorflow_quietly() -> Iterator[None]:
    """Load TensorFlow and Keras, start the runtime and run the block (loading a model) with the
    native start-up lines held; later C++ logs below WARNING are off unless TF_CPP_MIN_LOG_LEVEL
    says otherwise. For a command's own process only: fd 2 is process-wide, so a server's other
    threads would lose their lines for the while."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_held():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.constant(0.0).numpy()  # the first op starts the runtime: its CPU-feature note is printed here
        yield
