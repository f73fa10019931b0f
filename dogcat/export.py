"""`dogcat export`: the `.keras` classifier as an ONNX file for ONNX Runtime.

ONNX Runtime runs the network several milliseconds faster per photo than a Keras call on a
CPU, and needs neither TensorFlow nor JAX. The graph is written by dogcat.onnx_graph from the
model's own weights (any Keras backend, no tf2onnx). Besides the probabilities it returns the
pooled features the "neither" detector reads and what Grad-CAM needs, so an ONNX-only install
gives the same verdicts and heatmaps as Keras. The file goes beside the `.keras` as `dog_cat_classifier.onnx` and records
the sha256 of the `.keras` it came from, so a Classifier uses it only while it still matches
(see dogcat.inference).
"""

from __future__ import annotations

import json
from pathlib import Path

from dogcat.artifacts import (
    CLASS_NAMES_FILENAME,
    ONNX_FILENAME,
    file_sha256,
    load_class_names,
    save_atomic,
)
from dogcat.model import image_size_of, load_model
from dogcat.onnx_graph import classifier_to_onnx


def export_onnx(model_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the ONNX twin of `model_path` (default: beside it) and return its path."""
    model_path = Path(model_path)
    out_path = Path(out_path) if out_path is not None else model_path.with_name(ONNX_FILENAME)
    class_names = load_class_names(model_path.with_name(CLASS_NAMES_FILENAME))
    model = load_model(model_path)
    proto = classifier_to_onnx(model)
    metadata = {
        "dogcat_keras_sha256": file_sha256(model_path),
        "dogcat_class_names": json.dumps({str(k): v for k, v in class_names.items()}),
        "dogcat_image_size": str(image_size_of(model)),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    save_atomic(out_path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    return out_path
