"""The files of one model, named in one place: which model a command means, and what travels with it.

A model is a `.keras` file; everything else sits beside it under a fixed name. Copies of the folder
(a Ray actor's, a Space's) are made from `serving_files`, so a file the classifier reads cannot be left
behind by one path and not another. No NumPy here: the command line resolves a model cheaply.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dogcat.artifacts import (
    CHECKSUMS_FILENAME,
    CLASS_NAMES_FILENAME,
    DETECTOR_FILENAME,
    IMAGENET_HEAD_FILENAME,
    INT8_ONNX_FILENAME,
    MODEL_FILENAME,
    ONNX_FILENAME,
    ArtifactError,
    bundled_file,
)
from dogcat.config import ConfigError, PredictConfig, load_config

CONFIG_FILENAME = "config.toml"  # the run's resolved config: its [predict] settings drive the verdicts
TRAINING_RECORD_FILENAME = "training.json"  # `dogcat train`: epochs, validation scores, data manifest hash
TEST_RECORD_FILENAME = "test_metrics.json"  # `dogcat evaluate --out`: the held-out scores the cards show
CONFUSION_MATRIX_FILENAME = "confusion_matrix.png"  # `dogcat evaluate --out`, beside its record


@dataclass(frozen=True)
class ModelFolder:
    """One model's `.keras` file and the files beside it, each by its name."""

    keras: Path

    @classmethod
    def locate(cls, path: str | Path | None = None) -> ModelFolder:
        """`path` (a .keras file, or the folder holding one), else $DOGCAT_MODEL, else the shipped model
        (inside the wheel, or models/ in a source checkout), whether or not the file is there."""
        if path is None:
            path = os.environ.get("DOGCAT_MODEL") or bundled_file("models", MODEL_FILENAME)
            if path is None:
                raise ArtifactError(f"No model given and no shipped {MODEL_FILENAME} found; pass a model path.")
        path = Path(path)
        return cls(path / MODEL_FILENAME if path.is_dir() else path)

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> ModelFolder:
        """`locate`, and an ArtifactError naming the file when it is not there."""
        folder = cls.locate(path)
        if not folder.keras.is_file():
            raise ArtifactError(f"Model file not found. Received: model_path={str(folder.keras)!r}")
        return folder

    def beside(self, name: str) -> Path:
        return self.keras.with_name(name)

    @property
    def class_names(self) -> Path:
        return self.beside(CLASS_NAMES_FILENAME)

    def onnx(self, int8: bool = False) -> Path:
        """The exported twin ONNX Runtime serves: the float32 one, or the int8 one for bulk work."""
        return self.beside(INT8_ONNX_FILENAME if int8 else ONNX_FILENAME)

    @property
    def detector(self) -> Path:
        return self.beside(DETECTOR_FILENAME)

    @property
    def imagenet_head(self) -> Path | None:
        """The detector's ImageNet head: beside the model (a folder that travels whole), else the shipped one."""
        beside = self.beside(IMAGENET_HEAD_FILENAME)
        return beside if beside.is_file() else bundled_file("models", IMAGENET_HEAD_FILENAME)

    @property
    def config(self) -> Path:
        return self.beside(CONFIG_FILENAME)

    def predict_config(self, warnings: list[str] | None = None) -> PredictConfig:
        """The `[predict]` settings saved with the model's run, else the defaults: a damaged or foreign
        config.toml is not a reason to refuse predictions, but `warnings`, if given, receives why (a value
        out of range must not pass unnoticed)."""
        try:
            return load_config(self.config).predict if self.config.is_file() else PredictConfig()
        except (ConfigError, OSError) as error:
            if warnings is not None:
                warnings.append(f"{CONFIG_FILENAME} beside the model is not used ({error}); "
                                "the default [predict] settings serve")
            return PredictConfig()

    def serving_files(self, runtime: str = "auto") -> dict[str, Path]:
        """{name: file} a copy of this folder needs to answer as this one does with `runtime` (every file
        the Classifier opens that exists here): the model, its class names, the ONNX twins, their
        checksums, the detector with its ImageNet head, and the [predict] settings."""
        names = [MODEL_FILENAME, CLASS_NAMES_FILENAME, ONNX_FILENAME, CHECKSUMS_FILENAME, DETECTOR_FILENAME,
                 CONFIG_FILENAME, *([INT8_ONNX_FILENAME] if runtime == "onnx-int8" else [])]
        files = {name: self.beside(name) for name in names if self.beside(name).is_file()}
        if DETECTOR_FILENAME in files and self.imagenet_head is not None:
            files[IMAGENET_HEAD_FILENAME] = self.imagenet_head
        return files

    def card_files(self) -> dict[str, Path]:
        """{name: file} of the records a model card shows (what train and evaluate measured), where present."""
        names = (TRAINING_RECORD_FILENAME, TEST_RECORD_FILENAME, CONFUSION_MATRIX_FILENAME, CONFIG_FILENAME)
        return {name: self.beside(name) for name in names if self.beside(name).is_file()}

    def card(self) -> dict:
        """{"training": {...}, "test": {...}} from whichever records exist; a damaged one is left out,
        as it is not worth failing an app over."""
        card = {}
        for key, name in (("training", TRAINING_RECORD_FILENAME), ("test", TEST_RECORD_FILENAME)):
            try:
                card[key] = json.loads(self.beside(name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
        return card
