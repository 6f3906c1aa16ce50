"""Images fed to Keras in batches straight from the uint8 memmap, and the frozen-feature pass over
them: what training (train.py) and the probe baselines (baselines.py) share, below both, so
neither imports the other."""

from __future__ import annotations

import keras
import numpy as np


class ImageBatches(keras.utils.PyDataset):
    """Batches read from the uint8 memmap on demand (shuffled per epoch), as float32 0-255."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle = x, y.astype("float32"), batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.x[rows].astype("float32"), self.y[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))


def extract_features(extractor: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """One pass of the frozen backbone over every image: the cache phase 1 trains on."""
    return extractor.predict(ImageBatches(x, np.zeros((len(x), 1)), batch_size, False, 0), verbose=0)


def flip_averaged_features(extractor: keras.Model, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs of each image and of its mirror image, averaged (float64): the view-averaging the
    served graph does in-graph (models.with_sigmoid), for the probe's features and each member's outputs."""
    plain = extract_features(extractor, x, batch_size)
    mirrored = extract_features(extractor, np.asarray(x)[:, :, ::-1], batch_size)
    return ((plain + mirrored) / 2).astype("float64")
