"""Shared fixtures: tiny models (weights=None, 32 px) and optional real data/weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dogcat.config import ModelConfig

TINY_SIZE = 32
# Real photos from the Kaggle sample, both in the shipped model's held-out test split.
REAL_CAT, REAL_DOG = "cat.10086.jpg", "dog.10057.jpg"  # MobileNetV2's smallest input: builds and runs in a fraction of a second
REPO = Path(__file__).resolve().parents[1]
# Photos for measuring verdicts on other domains than Kaggle's (pets-dev, ood-dev): never shipped;
# tests that read them skip where they are absent.
DEV_PHOTOS = Path(os.environ.get("DOGCAT_DEV_PHOTOS", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_model_config() -> ModelConfig:
    return ModelConfig(weights="none", dense_units=8)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_config) -> Path:
    """An untrained tiny classifier saved as a run would save it: .keras + class_names.pkl."""
    import keras

    from dogcat.artifacts import CLASS_NAMES, MODEL_FILENAME, save_class_names
    from dogcat.model import build_model

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    build_model(tiny_model_config, TINY_SIZE).save(folder / MODEL_FILENAME)
    save_class_names(folder / "class_names.pkl", CLASS_NAMES)
    return folder


def vary_weights(model, seed: int = 0):
    """Give an untrained tiny classifier O(1) activations that depend on its input; returns it.

    With weights=none MobileNetV2's Glorot kernels shrink activations ~1e9-fold over the blocks,
    so every photo gets exactly [0.5, 0.5] and no comparison of two outputs can fail. He-scaled
    kernels keep the scale; random BatchNorm statistics make the BatchNorm layers matter too.
    """
    import keras
    import numpy as np

    from dogcat.model import BASE_NAME

    rng = np.random.default_rng(seed)
    for layer in model.get_layer(BASE_NAME).layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # before Conv2D: check the subclass first
            fan_in = int(np.prod(layer.kernel.shape[:2]))
        elif isinstance(layer, keras.layers.Conv2D):
            fan_in = int(np.prod(layer.kernel.shape[:3]))
        elif isinstance(layer, keras.layers.BatchNormalization):
            randomize_batch_norm(layer, rng)
            continue
        else:
            continue
        layer.kernel.assign(rng.normal(0, np.sqrt(2.0 / fan_in), layer.kernel.shape).astype("float32"))
    return model


def randomize_batch_norm(layer, rng) -> None:
    """Untrained BatchNorm layers are identities; real-looking statistics make them matter."""
    channels = layer.moving_mean.shape[0]
    layer.moving_mean.assign(rng.normal(0, 0.1, channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
    layer.beta.assign(rng.normal(0, 0.1, channels).astype("float32"))


@pytest.fixture(scope="session")
def varied_base_weights(tmp_path_factory, tiny_model_config) -> Path:
    """A varied tiny MobileNetV2 base as a weights file, for `model.weights=<file>` in training tests."""
    import keras

    from dogcat.model import BASE_NAME, build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("varied_base") / "mobilenet_v2_varied.weights.h5"
    vary_weights(build_model(tiny_model_config, TINY_SIZE)).get_layer(BASE_NAME).save_weights(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The Kaggle sample from $DOGCAT_SHARED_DATA (or ../shared beside the checkout); skips when absent."""
    candidates = [os.environ.get("DOGCAT_SHARED_DATA"), REPO.parent / "shared/data/kaggle-dogs-vs-cats-5k/train"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.skip("Kaggle sample not available (set DOGCAT_SHARED_DATA)")


@pytest.fixture(scope="session")
def imagenet_weights() -> Path:
    """The MobileNetV2 ImageNet no-top file in the Keras cache; skips when absent (never downloads)."""
    from dogcat.model import IMAGENET_WEIGHTS_FILE, keras_cache_dir

    path = keras_cache_dir() / IMAGENET_WEIGHTS_FILE
    if not path.is_file():
        pytest.skip(f"{IMAGENET_WEIGHTS_FILE} not in {keras_cache_dir()}")
    return path


def _drawn_photo(label: str, index: int, size: int = 64):
    """A small picture that differs per file: warm blobs for cats, cool stripes for dogs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([index, label == "dog"])
    pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    if label == "cat":
        pixels[..., 0] += 150
    else:
        pixels[::4, :, 2] += 180
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def kaggle_folder(tmp_path_factory) -> Path:
    """12 generated cats and 12 dogs in the Kaggle flat layout (cat.N.jpg, dog.N.jpg)."""
    folder = tmp_path_factory.mktemp("kaggle")
    for label in ("cat", "dog"):
        for index in range(12):
            _drawn_photo(label, index).save(folder / f"{label}.{index}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, kaggle_folder) -> Path:
    """kaggle_folder prepared with 10 per class: 8 train, 1 val, 1 test each."""
    from dogcat.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(kaggle_folder, out, per_class=10, seed=0, progress=False)
    return out
