import keras
import numpy as np
import pytest

from dogcat.calibration import fit_temperature, fold_temperature, log_loss_at, logits_of
from dogcat.dataset import ImageBatches
from dogcat.model import build_model
from tests.helpers import TINY_SIZE, vary_weights


def _sample(temperature: float, count: int = 20_000, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 6.0, size=(count, 2))
    scaled = np.exp(logits / temperature)
    labels = (rng.random(count) < scaled[:, 1] / scaled.sum(axis=1)).astype(np.int64)
    return logits, labels


@pytest.mark.parametrize("true_temperature", [1.5, 3.0])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at(true_temperature):
    logits, labels = _sample(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.08)


def test_fit_temperature_never_sharpens():
    logits, labels = _sample(0.5)  # underconfident logits: the unconstrained optimum is T = 0.5
    assert log_loss_at(logits, labels, 0.5) < log_loss_at(logits, labels, 1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=1e-3)


def test_fitted_temperature_minimises_the_log_loss():
    logits, labels = _sample(2.0, count=500, seed=1)
    best = fit_temperature(logits, labels)
    for other in (best * 0.9, best * 1.1, 1.0):
        assert log_loss_at(logits, labels, best) < log_loss_at(logits, labels, other)


def test_log_loss_survives_saturated_logits():
    logits = np.array([[0.0, 2000.0], [2000.0, 0.0]])  # float32 softmax would give exact 0 and 1
    assert log_loss_at(logits, np.array([0, 0]), 1.0) == pytest.approx(1000.0)


def test_fit_temperature_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match=r"Received: logits.shape=\(3, 2\), labels.shape=\(2,\)"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2))


def test_folding_divides_the_logits_and_keeps_every_label(tiny_model_config):
    model = vary_weights(build_model(tiny_model_config, TINY_SIZE, seed=0))
    rng = np.random.default_rng(0)
    kernel, _ = model.get_layer("probabilities").get_weights()
    # A confident head with a bias; the varied base makes the last layer's input, and so its
    # kernel's share of the logits, differ between images (a bias-only fold would show).
    model.get_layer("probabilities").set_weights([rng.normal(0, 5, kernel.shape), np.array([0.5, -0.5])])
    images = rng.integers(0, 256, (16, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    batches = ImageBatches(images, rng.integers(0, 2, 16), batch_size=5)
    logits, _ = logits_of(model, batches)
    assert (logits[:, 0] - logits[:, 1]).std() > 1.0, "the kernel's part of the logits should vary across images"
    before = model.predict_on_batch(batches[0][0])
    np.testing.assert_allclose(before, keras.ops.softmax(logits[:5]), rtol=1e-4, atol=1e-6)

    fold_temperature(model, 2.5)
    after = model.predict_on_batch(batches[0][0])
    np.testing.assert_allclose(after, keras.ops.softmax(logits[:5] / 2.5), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    assert not np.allclose(after, before)


def test_fold_refuses_a_non_positive_temperature(tiny_model_config):
    model = build_model(tiny_model_config, TINY_SIZE)
    with pytest.raises(ValueError, match="Received: temperature=0"):
        fold_temperature(model, 0)
