"""Training batches: images decoded once (through dogcat.preprocessing) into a uint8 array in
memory, then served by a `keras.utils.PyDataset`, which works the same on every backend."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from dogcat.preprocessing import decode_image, to_model_input


def decode_all(paths: list[Path], image_size: int, desc: str = "decoding", progress: bool = True) -> np.ndarray:
    """uint8 (N, image_size, image_size, 3); 4,000 images at 224 px take about 600 MB."""
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=not progress)):
        images[i] = decode_image(path, image_size)
    return images


class ImageBatches(keras.utils.PyDataset):
    """(float32 images in [0, 1], int labels) batches; reshuffled every epoch when `shuffle`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0):
        super().__init__()
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length. Received: {len(images)} images, {len(labels)} labels")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        return to_model_input(self.images[rows]), self.labels[rows]

    def set_epoch(self, epoch: int) -> None:
        """The order depends only on (seed, epoch), so a resumed run sees the same batches."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(len(self.images)) if self.shuffle else np.arange(len(self.images))

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

