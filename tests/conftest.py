"""Shared fixtures: tiny models (weights=None, 32 px) and optional real data/weights.

Fixtures only: the constants and helpers the tests share are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dogcat.config import ModelConfig
from tests.helpers import REPO, TINY_SIZE, drawn_photo, vary_weights


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


@pytest.fixture(scope="session")
def kaggle_folder(tmp_path_factory) -> Path:
    """12 generated cats and 12 dogs in the Kaggle flat layout (cat.N.jpg, dog.N.jpg)."""
    folder = tmp_path_factory.mktemp("kaggle")
    for label in ("cat", "dog"):
        for index in range(12):
            drawn_photo(label, index).save(folder / f"{label}.{index}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, kaggle_folder) -> Path:
    """kaggle_folder prepared with 10 per class: 8 train, 1 val, 1 test each."""
    from dogcat.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(kaggle_folder, out, per_class=10, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def shipped_dataset(shared_data, tmp_path_factory) -> Path:
    """The shipped model's own dataset, prepared again (same seed, same manifest)."""
    from dogcat.data import prepare

    out = tmp_path_factory.mktemp("bulk") / "dogcat-4k"
    prepare(shared_data, out, per_class=2000, seed=42, progress=False)
    return out


@pytest.fixture(scope="session")
def int8_model(shipped_dataset, tmp_path_factory) -> Path:
    """A copy of the shipped model folder with its int8 twin, written by `dogcat export --int8`
    (once a session: test_int8.py and test_batch.py share it)."""
    import shutil

    from dogcat.artifacts import MODEL_FILENAME
    from dogcat.cli import main

    folder = tmp_path_factory.mktemp("model")
    for item in (REPO / "models").iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)
    assert main(["export", str(folder / MODEL_FILENAME), "--int8", "--data", str(shipped_dataset)]) == 0
    return folder / MODEL_FILENAME
