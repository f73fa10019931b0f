"""The model committed under models/: loads safely, and reproduces its model card on the real data."""

import hashlib
import json

import pytest

from dogcat.artifacts import CLASS_NAMES, load_class_names
from dogcat.inference import Classifier
from dogcat.model_folder import ModelFolder
from tests.helpers import REPO, SHIPPED

pytestmark = pytest.mark.skipif(not (SHIPPED / "dog_cat_classifier.keras").is_file(), reason="no shipped model")


def test_shipped_model_is_the_default_and_loads_safely():
    assert ModelFolder.resolve().keras == SHIPPED / "dog_cat_classifier.keras"
    assert load_class_names(SHIPPED / "class_names.pkl") == CLASS_NAMES == {0: "cat", 1: "dog"}
    classifier = Classifier.from_path()
    assert classifier.image_size == 224
    assert classifier.runtime == "onnx", "models/dog_cat_classifier.onnx must match the shipped .keras (dogcat export)"


def test_shipped_model_labels_the_demo_cat_and_dog():
    """The demo's two animal examples, photos the model never saw in training."""
    examples = REPO / "demos" / "examples"
    predictions = Classifier.from_path().predict([examples / "cat-chelsea.jpg", examples / "dog-darknet.jpg"])
    assert [p.label for p in predictions] == ["cat", "dog"], predictions


@pytest.mark.shared_data
def test_shipped_model_reproduces_its_recorded_test_metrics(tmp_path, shared_data):
    """Re-prepare the Kaggle sample (same seed -> same manifest) and re-score the test split."""
    from dogcat.data import prepare
    from dogcat.evaluate import evaluate

    recorded = json.loads((SHIPPED / "test_metrics.json").read_text())
    training = json.loads((SHIPPED / "training.json").read_text())
    prepare(shared_data, tmp_path / "data", per_class=2000, seed=42, progress=False)
    manifest = (tmp_path / "data" / "manifest.csv").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == training["data_manifest_sha256"]
    for runtime in ("keras", "onnx"):  # the reference, and the fast runtime the apps use
        metrics = evaluate(Classifier.from_path(runtime=runtime), tmp_path / "data", "test")
        assert metrics["count"] == recorded["count"] == 400
        assert metrics["confusion_matrix"] == recorded["confusion_matrix"], runtime
        assert metrics["log_loss"] == pytest.approx(recorded["log_loss"], abs=1e-4), runtime
        assert metrics["accuracy"] >= 0.97
