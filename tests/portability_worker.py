"""Run in a child process with KERAS_BACKEND set; used by test_portability.py.

    python -m tests.portability_worker train MODEL_DIR IMAGES.npy OUT.npy
    python -m tests.portability_worker predict MODEL.keras IMAGES.npy OUT.npy
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

from dogcat.artifacts import CLASS_NAMES, MODEL_FILENAME, save_class_names
from dogcat.config import ModelConfig
from dogcat.inference import Classifier
from dogcat.model import build_model


def train(model_dir: Path, images: np.ndarray) -> None:
    """A few fit steps on this backend, so the saved weights were produced here."""
    keras.utils.set_random_seed(int(sum(map(ord, keras.backend.backend()))))
    model = build_model(ModelConfig(dense_units=16), images.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    labels = np.arange(len(images)) % 2
    model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / MODEL_FILENAME)
    save_class_names(model_dir / "class_names.pkl", CLASS_NAMES)


def main() -> None:
    command, target, images_path, out_path = sys.argv[1:5]
    images = np.load(images_path)
    if command == "train":
        train(Path(target), images)
        target = str(Path(target) / MODEL_FILENAME)
    # The Keras runtime on purpose: an ONNX twin beside the model would answer the same on both backends.
    probabilities = Classifier.from_path(target, runtime="keras").predict_batch(images)
    np.save(out_path, probabilities)
    print(keras.backend.backend())


if __name__ == "__main__":
    main()
