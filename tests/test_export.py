"""ONNX export: the fast runtime must agree with the Keras model, and never serve a stale file."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from dogcat.artifacts import ArtifactError
from dogcat.inference import Classifier
from dogcat.preprocessing import preprocess
from tests.helpers import REAL_CAT, REAL_DOG, REPO, drawn_photo

keras = pytest.importorskip("keras")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
PARITY = 1e-4  # max absolute probability difference allowed between ONNX Runtime and Keras


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model copied to a temporary folder and exported there (on this test run's backend)."""
    from dogcat.export import export_onnx

    folder = tmp_path_factory.mktemp("exported")
    for name in ("dog_cat_classifier.keras", "class_names.pkl"):
        shutil.copy(REPO / "models" / name, folder / name)
    export_onnx(folder / "dog_cat_classifier.keras")
    return folder / "dog_cat_classifier.keras"


def _photos(shared_data=None) -> np.ndarray:
    images = []
    for index in range(6):
        buffer = io.BytesIO()
        drawn_photo("cat" if index % 2 else "dog", index, size=200).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    if shared_data is not None:
        images += [(shared_data / name).read_bytes() for name in (REAL_CAT, REAL_DOG)]
        images += [p.read_bytes() for p in sorted(shared_data.glob("dog.2*.jpg"))[:8]]
    return preprocess(images)


def test_onnx_runtime_matches_keras_on_generated_photos(exported):
    onnx, reference = Classifier.from_path(exported), Classifier.from_path(exported, runtime="keras")
    assert (onnx.runtime, reference.runtime) == ("onnx", "keras")
    images = _photos()
    expected = reference.predict_batch(images)
    assert np.ptp(expected[:, 0]) > 1e-3, "the photos should get different answers"
    np.testing.assert_allclose(onnx.predict_batch(images), expected, atol=PARITY, rtol=0)


@pytest.mark.shared_data
def test_onnx_runtime_matches_keras_on_real_photos(exported, shared_data):
    images = _photos(shared_data)
    onnx, reference = Classifier.from_path(exported), Classifier.from_path(exported, runtime="keras")
    np.testing.assert_allclose(onnx.predict_batch(images), reference.predict_batch(images), atol=PARITY, rtol=0)


def test_onnx_features_are_the_keras_models_features(exported):
    """The "neither" detector reads these: the ONNX-only Space must see what Keras sees."""
    import onnxruntime

    from dogcat.model import load_model, with_features

    session = onnxruntime.InferenceSession(str(exported.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    model = load_model(exported)
    images = _photos()
    probabilities, features = session.run(["probabilities", "features"], {"image": images})
    keras_probabilities, expected = with_features(model).predict_on_batch(images)
    # The first block is the head's own pooling: the very tensor the classifier's Dense layers read.
    pool = keras.Model(model.input, model.get_layer("pool").output).predict_on_batch(images)
    np.testing.assert_allclose(expected[:, :1280], pool, atol=1e-5 * np.abs(pool).max(), rtol=0)
    assert features.shape == expected.shape == (len(images), 1280 + 160)
    np.testing.assert_allclose(features, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
    np.testing.assert_allclose(keras_probabilities, model.predict_on_batch(images), atol=1e-6, rtol=0)
    np.testing.assert_allclose(probabilities, keras_probabilities, atol=PARITY, rtol=0)


def test_onnx_grad_cam_outputs_are_the_keras_models(exported):
    """Grad-CAM's inputs from the graph (dogcat.explain): the feature map and the logits' gradient,
    which the graph computes from the head's weights; Keras gets the same from NumPy."""
    import onnxruntime

    from dogcat.explain import logit_gradients
    from dogcat.model import load_model, with_features

    session = onnxruntime.InferenceSession(str(exported.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    model = load_model(exported)
    images = _photos()
    feature_map, gradients = session.run(["feature_map", "logit_gradients"], {"image": images})
    expected_map = np.asarray(with_features(model, feature_map=True).predict_on_batch(images)[2])
    assert feature_map.shape == expected_map.shape == (len(images), 7, 7, 1280)
    np.testing.assert_allclose(feature_map, expected_map, atol=1e-4 * np.abs(expected_map).max(), rtol=0)
    weights = [keras.ops.convert_to_numpy(w) for w in (model.get_layer("dense").kernel, model.get_layer("dense").bias,
                                                       model.get_layer("probabilities").kernel)]
    expected = logit_gradients(expected_map.mean(axis=(1, 2)), *weights)
    assert gradients.shape == expected.shape == (len(images), 1280, 2)
    assert np.ptp(gradients[:, :, 0], axis=0).max() > 1e-3, "each photo's own ReLU pattern should show"
    np.testing.assert_allclose(gradients, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_a_stale_export_is_never_used(exported, tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(exported.parent, folder)
    # Retrain (here: replace) the .keras without exporting again.
    shutil.copy(tiny_model_dir / "dog_cat_classifier.keras", folder / "dog_cat_classifier.keras")
    assert Classifier.from_path(folder / "dog_cat_classifier.keras").runtime == "keras"
    with pytest.raises(ArtifactError, match=r"exported from a different \.keras file"):
        Classifier.from_path(folder / "dog_cat_classifier.keras", runtime="onnx")


def test_forcing_onnx_without_an_export_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ArtifactError, match=r"no dog_cat_classifier\.onnx beside the model"):
        Classifier.from_path(tiny_model_dir / "dog_cat_classifier.keras", runtime="onnx")


def test_export_command_writes_the_file_predict_then_uses(tmp_path, capsys):
    from dogcat.cli import main

    for name in ("dog_cat_classifier.keras", "class_names.pkl"):
        shutil.copy(REPO / "models" / name, tmp_path / name)
    assert main(["export", str(tmp_path / "dog_cat_classifier.keras")]) == 0
    assert (tmp_path / "dog_cat_classifier.onnx").stat().st_size > 1_000_000
    assert Classifier.from_path(tmp_path / "dog_cat_classifier.keras").runtime == "onnx"
