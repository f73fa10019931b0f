"""Shared fixtures: tiny models (weights=None, 32 px) and optional real data/weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dogcat.config import ModelConfig

TINY_SIZE = 32  # MobileNetV2's smallest input: builds and runs in a fraction of a second
REPO = Path(__file__).resolve().parents[1]


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
