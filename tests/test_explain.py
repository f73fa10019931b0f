"""Grad-CAM (dogcat.explain): the closed-form NumPy map must be the autodiff one, the same on both
runtimes, point at the animal, and be drawn over the photo the way the photo is shown."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dogcat.explain import grad_cam, overlay
from dogcat.inference import Classifier
from tests.helpers import REPO
from tests.imagegen import encode, make_exif_jpeg

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.slow
CAT = REPO / "demos" / "examples" / "cat-chelsea.jpg"
PHOTOS = [CAT, REPO / "demos" / "examples" / "dog-darknet.jpg", REPO / "demos" / "examples" / "astronaut.jpg"]


@pytest.fixture(scope="module")
def keras_classifier():
    return Classifier.from_path(REPO / "models" / "dog_cat_classifier.keras", runtime="keras")


def _framework_gradient(function, feature_map: np.ndarray) -> np.ndarray:
    """d sum(function(A)) / d A by the backend's own autodiff (TensorFlow or JAX)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.constant(feature_map)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            total = tf.reduce_sum(function(tensor))
        return tape.gradient(total, tensor).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda a: function(a).sum())(feature_map))
    pytest.skip(f"no autodiff helper for the {backend} backend")


def test_numpy_heatmap_is_the_autodiff_grad_cam(keras_classifier):
    from dogcat.model import HEAD_LAYERS, with_features
    from dogcat.preprocessing import preprocess

    model = keras_classifier.runner.model
    images = preprocess([str(p) for p in PHOTOS])
    probabilities, _, feature_map = map(np.asarray, with_features(model, feature_map=True).predict_on_batch(images))
    predicted = probabilities.argmax(axis=1)
    dense, logits = model.get_layer(HEAD_LAYERS[1]), model.get_layer(HEAD_LAYERS[-1])

    def predicted_logits(a):  # the head with its softmax left off, one logit per photo
        hidden = dense(keras.ops.mean(a, axis=(1, 2)))
        scores = keras.ops.matmul(hidden, logits.kernel) + logits.bias
        return keras.ops.sum(scores * keras.ops.one_hot(predicted, scores.shape[-1]), axis=-1)

    gradient = _framework_gradient(predicted_logits, feature_map)
    alpha = gradient.mean(axis=(1, 2))  # Grad-CAM: the gradient averaged over positions
    expected = np.maximum(np.einsum("nhwk,nk->nhw", feature_map, alpha), 0)
    expected /= expected.max(axis=(1, 2), keepdims=True)

    predictions = keras_classifier.predict([str(p) for p in PHOTOS], explain=True)
    assert [int(np.argmax(list(p.probabilities.values()))) for p in predictions] == list(predicted)
    assert len(set(predicted)) == 2  # both classes' maps are exercised
    heatmaps = np.stack([p.heatmap for p in predictions])
    assert heatmaps.shape == feature_map.shape[:3]
    np.testing.assert_allclose(heatmaps, expected, atol=1e-4)
    assert (heatmaps.max(axis=(1, 2)) == 1).all()
    assert heatmaps.min() >= 0


def test_keras_and_onnx_heatmaps_agree(keras_classifier):
    pytest.importorskip("onnxruntime")
    onnx = Classifier.from_path(REPO / "models" / "dog_cat_classifier.keras", runtime="onnx")
    assert onnx.can_explain, "the shipped ONNX twin lacks Grad-CAM's outputs: run `dogcat export` on it"
    from_keras = keras_classifier.predict([str(p) for p in PHOTOS], explain=True)
    from_onnx = onnx.predict([str(p) for p in PHOTOS], explain=True)
    for k, o in zip(from_keras, from_onnx, strict=True):
        assert k.label == o.label
        np.testing.assert_allclose(o.heatmap, k.heatmap, atol=1e-3)


@pytest.mark.parametrize("corner", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_heatmap_peak_falls_inside_a_cat_pasted_into_a_corner(corner):
    cat = Image.open(CAT).convert("RGB")
    # The cat covers exactly 4 of the map's 7 cells each way, so a cell is either cat or grey.
    canvas = Image.new("RGB", (cat.width * 7 // 4, cat.height * 7 // 4), (128, 128, 128))
    left, top = corner[0] * (canvas.width - cat.width), corner[1] * (canvas.height - cat.height)
    canvas.paste(cat, (left, top))
    prediction = Classifier.from_path().predict([encode(canvas)], explain=True)[0]
    assert prediction.label == "cat"
    row, column = np.unravel_index(np.argmax(prediction.heatmap), prediction.heatmap.shape)
    rows, columns = prediction.heatmap.shape
    y, x = (row + 0.5) * canvas.height / rows, (column + 0.5) * canvas.width / columns
    assert left <= x < left + cat.width, (row, column)
    assert top <= y < top + cat.height, (row, column)


def test_no_heatmap_and_no_feature_map_transfer_unless_asked():
    pytest.importorskip("onnxruntime")
    classifier = Classifier.from_path(runtime="onnx")
    asked = []
    run = classifier.runner.session.run
    classifier.runner.session = type("Spy", (), {"run": lambda self, names, feed: asked.append(names) or run(names, feed)})()
    plain = classifier.predict([str(CAT)])[0]
    assert plain.heatmap is None
    assert asked == [["probabilities", "features"]]
    assert classifier.predict([str(CAT)], explain=True)[0].heatmap.shape == (7, 7)


def _upright_halves() -> Image.Image:
    """A 300 x 200 picture: red on top, blue below, so a turn or a flip shows."""
    picture = Image.new("RGB", (300, 200), (200, 30, 30))
    picture.paste((30, 30, 200), (0, 100, 300, 200))
    return picture


def test_overlay_has_the_photos_size_and_orientation_for_an_exif_rotated_input():
    upright = _upright_halves()
    stored = make_exif_jpeg(upright, orientation=6)  # stored sideways, EXIF says turn it
    assert Image.open(io.BytesIO(stored)).size == (200, 300)
    cold = overlay(stored, np.zeros((7, 7), np.float32))
    assert cold.size == upright.size
    pixels = np.asarray(cold, dtype=int)
    assert pixels[20, 150, 0] > 150  # red on top...
    assert pixels[180, 150, 2] > 150  # ...blue below: upright
    hot_corner = np.zeros((7, 7), np.float32)
    hot_corner[-1, 0] = 1  # bottom left, on blue: the hot colour is a red
    shown = np.asarray(overlay(stored, hot_corner), dtype=int)
    assert shown[195, 5, 0] - pixels[195, 5, 0] > 80  # the bottom-left cell is coloured...
    assert np.array_equal(shown[:50, 200:], pixels[:50, 200:])  # ...and far from it, the photo is untouched


def test_overlay_is_capped_for_display_and_keeps_the_aspect_ratio():
    shown = overlay(encode(Image.new("RGB", (1500, 1000), (90, 90, 90)), "JPEG"), np.ones((7, 7), np.float32))
    assert shown.size == (512, 341)


def test_grad_cam_is_zero_where_nothing_speaks_for_the_class():
    feature_map = np.ones((1, 7, 7, 4), np.float32)
    gradients = np.array([[[1.0, -1.0]] * 4], np.float32)  # class 0 gains from every feature, class 1 loses
    maps = grad_cam(feature_map, gradients)
    assert np.all(maps[..., 0] == 1)
    assert np.all(maps[..., 1] == 0)


def test_overlay_refuses_a_heatmap_out_of_range():
    with pytest.raises(ValueError, match=r"Received: heatmap=shape \(7, 7\), values \[2, 2\]"):
        overlay(encode(_upright_halves()), np.full((7, 7), 2.0, np.float32))
