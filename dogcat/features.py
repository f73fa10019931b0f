"""Training on cached frozen-trunk activations: the fast path of `dogcat train`.

During fine-tuning only MobileNetV2's last `fine_tune_blocks` blocks and the head learn; every
layer before them is frozen, and with BatchNormalization frozen too (see dogcat.model) that
frozen trunk is a fixed function of its input. So its output for an image is computed once and
reused every epoch, and only the small top of the network runs forward and backward.

Augmentation sits in front of the trunk, so it cannot change per epoch without re-running the
trunk. Instead each training image gets `views` fixed versions, drawn once: view 0 is the image
itself and views 1.. come from the model's own augmentation family (a RandomFlip and a
RandomRotation made by the model's own `augmentation_layers`, each view seeded by (seed, view)). Every epoch
each image is shown as one of its views, chosen from (seed, epoch). Training the top on those
cached activations is exactly training the whole model on augmentation drawn from that fixed set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping

import keras
import numpy as np
from tqdm import tqdm

from dogcat.config import ModelConfig
from dogcat.model import BASE_NAME, HEAD_LAYERS, NUM_MOBILENET_BLOCKS, augmentation_layers
from dogcat.preprocessing import to_model_input


def cut_tensor(model: keras.Model, fine_tune_blocks: int):
    """The base's tensor that enters its first fine-tuned block (its output when none is tuned)."""
    if not 0 <= fine_tune_blocks <= NUM_MOBILENET_BLOCKS:
        raise ValueError(
            f"fine_tune_blocks must be in [0, {NUM_MOBILENET_BLOCKS}]. Received: fine_tune_blocks={fine_tune_blocks}"
        )
    base = model.get_layer(BASE_NAME)
    if fine_tune_blocks == 0:
        return base.output
    return base.get_layer(f"block_{NUM_MOBILENET_BLOCKS + 1 - fine_tune_blocks}_expand").input


def split_model(model: keras.Model, fine_tune_blocks: int) -> tuple[keras.Model, keras.Model]:
    """(trunk, top) sharing `model`'s layers: trunk maps [0, 1] images to the activations that
    enter the first fine-tuned block (the base's output when none is tuned), and top maps those
    activations to probabilities, so that top(trunk(x)) == model(x) with augmentation off."""
    base = model.get_layer(BASE_NAME)
    cut = cut_tensor(model, fine_tune_blocks)
    images = keras.Input(model.input_shape[1:], name="image")
    x = model.get_layer("to_mobilenet_range")(images)
    trunk = keras.Model(images, keras.Model(base.input, cut, name="frozen_base")(x, training=False), name="trunk")

    activations = keras.Input(tuple(cut.shape[1:]), name="activations")
    x = activations
    if fine_tune_blocks > 0:
        x = keras.Model(cut, base.output, name="tuned_base")(x, training=False)
    for name in HEAD_LAYERS:
        x = model.get_layer(name)(x)
    return trunk, keras.Model(activations, x, name="top")


def augmented_views(images: np.ndarray, config: ModelConfig, view: int, seed: int, batch_size: int = 64):
    """Yield float32 [0, 1] batches of view `view` of uint8 `images`; view 0 is the images as they are."""
    # Fresh layers from the same function as the model's, seeded per view: a resumed run, whose
    # model's own layers have moved on, still gets the same views.
    layers = augmentation_layers(config, int(np.random.default_rng([seed, view]).integers(2**31 - 1))) if view else []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size])
        for layer in layers:
            batch = layer(batch, training=True)
        yield keras.ops.convert_to_numpy(batch) if layers else batch


def trunk_function(model: keras.Model, fine_tune_blocks: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(images -> frozen-trunk activations, runtime name): ONNX Runtime where the trunk
    translates (dogcat.onnx_graph), else the Keras trunk of `split_model`."""
    from dogcat.onnx_graph import onnx_trunk_runner

    runner = onnx_trunk_runner(model, cut_tensor(model, fine_tune_blocks))
    if runner is not None:
        return runner, "onnxruntime"
    trunk, _ = split_model(model, fine_tune_blocks)
    return (lambda images: keras.ops.convert_to_numpy(trunk.predict_on_batch(images))), "keras"


def cache_activations(
    trunk: Callable[[np.ndarray], np.ndarray], images: np.ndarray, config: ModelConfig, views: int, seed: int,
    desc: str = "caching", progress: bool = True, batch_size: int = 64,
    memo: MutableMapping[tuple, np.ndarray] | None = None, memo_key: tuple = (),
) -> np.ndarray:
    """float32 (views, N, *activation shape): `trunk`'s output for every view of every image.

    `memo` (a mapping the caller keeps across runs, e.g. dogcat.tune across its trials) holds
    each view under `memo_key` + (view, and for views 1.. the flip, rotation and seed that draw
    it), and a view found there is not computed again. `memo_key` must name everything else the
    activations depend on (images, trunk); view 0 is the same for any augmentation and any seed.
    """
    keys = view_keys(config, views, seed, memo_key)
    missing = [view for view in range(views) if memo is None or keys[view] not in memo]
    shape: tuple[int, ...] | None = None
    cache = np.empty(0, dtype=np.float32)
    steps = len(missing) * math.ceil(len(images) / batch_size)
    with tqdm(total=steps, desc=desc, unit="batch", disable=not progress) as bar:
        for view in range(views):
            if view not in missing:
                activations = memo[keys[view]]
                if shape is None:
                    shape = activations.shape[1:]
                    cache = np.empty((views, len(images), *shape), dtype=np.float32)
                cache[view] = activations
                continue
            start = 0
            for batch in augmented_views(images, config, view, seed, batch_size):
                activations = trunk(batch)
                if shape is None:
                    shape = activations.shape[1:]
                    cache = np.empty((views, len(images), *shape), dtype=np.float32)
                cache[view, start : start + len(batch)] = activations
                start += len(batch)
                bar.update()
            if memo is not None:
                memo[keys[view]] = cache[view].copy()
    return cache


class ActivationMemo(dict):
    """A `cache_activations` memo kept across runs (dogcat.tune's trials, benchmarks/seeds.py's seeds): the least
    recently used views are dropped past `max_bytes`."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes

    def __getitem__(self, key):
        value = super().pop(key)
        super().__setitem__(key, value)  # now the most recently used
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while sum(v.nbytes for v in self.values()) > self.max_bytes:
            del self[next(iter(self))]


def view_keys(config: ModelConfig, views: int, seed: int, memo_key: tuple = ()) -> list[tuple]:
    """The key of each view in a `cache_activations` memo: `memo_key` + (view, flip, rotation, seed).

    View 0 is the photo as it is, so its key leaves out the augmentation and the seed: runs that
    differ only in those (the seeds of benchmarks/seeds.py, a search's trials) share it.
    """
    return [(*memo_key, view, *((config.flip, config.rotation, seed) if view else ())) for view in range(views)]


class CachedViews(keras.utils.PyDataset):
    """(activations, labels) batches, each image shown as one of its cached views per epoch.

    Order and views depend only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, activations: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0):
        super().__init__()
        if activations.shape[1] != len(labels):
            raise ValueError(
                f"activations and labels differ in length. Received: {activations.shape[1]} images, {len(labels)} labels"
            )
        self.activations, self.labels, self.batch_size = activations, labels, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.activations[self._views[rows], rows], self.labels[rows]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        count, views = len(self.labels), self.activations.shape[0]
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(count) if self.shuffle else np.arange(count)
        self._views = rng.integers(0, views, count) if views > 1 else np.zeros(count, dtype=np.int64)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)
