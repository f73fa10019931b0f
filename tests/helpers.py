"""Constants and helpers the tests share (fixtures live in conftest.py): paths, tiny models, drawn photos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TINY_SIZE = 32  # MobileNetV2's smallest input: builds and runs in a fraction of a second
# Real photos from the Kaggle sample, both in the shipped model's held-out test split.
REAL_CAT, REAL_DOG = "cat.10086.jpg", "dog.10057.jpg"
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models"  # the shipped model's folder
EXAMPLES = REPO / "demos" / "examples"  # real photos that ship with the checkout: a cat, a dog, two neither
# Photos for measuring verdicts on other domains than Kaggle's (pets-dev, ood-dev): never shipped;
# tests that read them skip where they are absent.
DEV_PHOTOS = Path(os.environ.get("DOGCAT_DEV_PHOTOS", REPO.parent / "shared" / "data"))


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


def drawn_photo(label: str, index: int, size: int = 64):
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


def model_folder_copy(tmp_path):
    """A copy of the shipped model folder to damage or reconfigure: (the folder, its .keras file)."""
    folder = tmp_path / "model"
    shutil.copytree(REPO / "models", folder, ignore=shutil.ignore_patterns("*.png", "*.md", "*.int8.onnx"))
    return folder, folder / "dog_cat_classifier.keras"


# --- Gradio servers under test (the demo and the built Space) --------------------------------------

SERVER_START_TIMEOUT = 120  # seconds; the server is usually up in 6-10 s here


def assert_one_clean_line(message: str, folder: Path) -> None:
    assert "\n" not in message
    assert "Traceback" not in message
    assert str(folder) not in message  # the server's upload folder is not the user's business


def gradio_server_env(port: int, keep_backend: bool = False) -> dict[str, str]:
    """The environment of a server under test: a Space has no $DOGCAT_MODEL nor $KERAS_BACKEND (so TensorFlow)."""
    dropped = ("DOGCAT_MODEL", "PYTHONPATH") + (() if keep_backend else ("KERAS_BACKEND",))
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


def label_probabilities(result: dict) -> dict[str, float]:
    """gr.Label's API value -> {label: probability}."""
    return {item["label"]: item["confidence"] for item in result["confidences"]}


def classify_by_api(client, path: Path, explain: bool = False) -> tuple[str, str, dict[str, float], str | None]:
    """(the verdict in words, the top class, the probabilities, the overlay's local file or None) from /predict."""
    import gradio_client

    verdict, result, _, looked = client.predict(gradio_client.handle_file(str(path)), explain, api_name="/predict")
    return verdict["label"], result["label"], label_probabilities(result), looked



def code_objects(path: Path) -> list:
    """Every code object of a Python file (the module's, each function's and class's), compiled, not parsed
    into `ast` objects: CPython 3.11 keeps the AST constructor's recursion count in interpreter-wide state
    (gh-106905), and `ast.parse` in a long test session once failed with a spurious "AST constructor
    recursion depth mismatch" SystemError. Compiling to bytecode never builds those objects."""
    import types

    found, todo = [], [compile(path.read_text(encoding="utf-8"), str(path), "exec")]
    while todo:
        code = todo.pop()
        found.append(code)
        todo.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return found


def _shipped_detector() -> bool:
    from dogcat.artifacts import DETECTOR_FILENAME

    return (SHIPPED / DETECTOR_FILENAME).is_file()


needs_shipped = pytest.mark.skipif(not _shipped_detector(), reason="no shipped detector")
