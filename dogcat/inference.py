"""The inference API: a loaded classifier that turns image sources into probabilities.

The CLI, `evaluate` and the apps all go through `Classifier`, which derives the input size from
the model and decodes through dogcat.preprocessing, so serving cannot drift from training.
One unreadable file becomes a `Prediction` with an `error`; the others are still predicted.
A `Classifier` can be shared between threads (a Streamlit process serves many sessions).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dogcat.artifacts import (
    CLASS_NAMES_FILENAME,
    MODEL_FILENAME,
    ArtifactError,
    bundled_file,
    load_class_names,
)
from dogcat.model import image_size_of, load_model
from dogcat.preprocessing import ImageError, ImageSource, decode_image, to_model_input


def default_model_path() -> Path:
    """$DOGCAT_MODEL, else the shipped model (inside the wheel, or models/ in a source checkout)."""
    if os.environ.get("DOGCAT_MODEL"):
        return Path(os.environ["DOGCAT_MODEL"])
    shipped = bundled_file("models", MODEL_FILENAME)
    if shipped is None:
        raise ArtifactError(f"No model given and no shipped {MODEL_FILENAME} found; pass a model path.")
    return shipped


@dataclass(frozen=True)
class Prediction:
    """One source's result: `probabilities` maps every class name to its probability, or `error` says why not."""

    source: str
    probabilities: dict[str, float] | None = None
    error: str | None = None

    @property
    def label(self) -> str | None:
        if self.probabilities is None:
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else max(self.probabilities.values())


class Classifier:
    def __init__(self, model: keras.Model, class_names: dict[int, str], batch_size: int = 32):
        outputs = model.output_shape[-1]
        if outputs != len(class_names):
            raise ArtifactError(f"Model has {outputs} outputs but {len(class_names)} class names. Received: class_names={class_names}")
        self.model = model
        self.class_names = class_names
        self.image_size = image_size_of(model)
        self.batch_size = batch_size
        self._lock = threading.Lock()  # Keras models are not safe to call from several threads at once

    @classmethod
    def from_path(cls, model_path: str | Path | None = None, class_names_path: str | Path | None = None, batch_size: int = 32) -> Classifier:
        """Load a `.keras` model and the `class_names.pkl` beside it (or at `class_names_path`)."""
        model_path = Path(model_path) if model_path is not None else default_model_path()
        if model_path.is_dir():
            model_path = model_path / MODEL_FILENAME
        class_names_path = Path(class_names_path) if class_names_path else model_path.with_name(CLASS_NAMES_FILENAME)
        class_names = load_class_names(class_names_path)  # before the model: cheap, and refuses bad files early
        return cls(load_model(model_path), class_names, batch_size)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, size, size, 3) in [0, 1] -> probabilities (N, num_classes)."""
        images = np.asarray(images, dtype=np.float32)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ImageError(f"Expected images of shape (N, {', '.join(map(str, expected))}). Received: shape={images.shape}")
        outputs = []
        with self._lock:
            for start in range(0, len(images), self.batch_size):
                outputs.append(np.asarray(self.model.predict_on_batch(images[start : start + self.batch_size])))
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Prediction]:
        """Predict every source; unreadable ones come back with `error` set, in input order."""
        names = list(names) if names is not None else [_describe(s) for s in sources]
        decoded: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for index, source in enumerate(sources):
            try:
                decoded[index] = decode_image(source, self.image_size)
            except ImageError as error:
                errors[index] = str(error).removeprefix(f"{names[index]}: ").removeprefix("image: ")
        probabilities: dict[int, np.ndarray] = {}
        if decoded:
            order = sorted(decoded)
            batch = self.predict_batch(to_model_input(np.stack([decoded[i] for i in order])))
            probabilities = dict(zip(order, batch, strict=True))
        return [
            Prediction(names[i], error=errors[i]) if i in errors
            else Prediction(names[i], {self.class_names[c]: float(p) for c, p in enumerate(probabilities[i])})
            for i in range(len(names))
        ]

    def predict_one(self, source: ImageSource) -> dict[str, float]:
        """{class name: probability} for one image; raises ImageError with a one-line reason."""
        image = to_model_input(decode_image(source, self.image_size))
        return {self.class_names[c]: float(p) for c, p in enumerate(self.predict_batch(image)[0])}


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return getattr(source, "name", None) or type(source).__name__
