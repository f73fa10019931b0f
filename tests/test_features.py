"""The cached-trunk training path: the split is exact, views are fixed and seeded, batches are reproducible."""

import keras
import numpy as np
import pytest

from dogcat.config import ModelConfig
from dogcat.features import (
    CachedViews,
    augmented_views,
    cache_activations,
    split_model,
    trunk_function,
)
from dogcat.model import build_model, set_fine_tuning
from dogcat.onnx_graph import UnsupportedLayer
from tests.helpers import TINY_SIZE, randomize_batch_norm, vary_weights


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("fine_tune_blocks", [0, 1, 3])
def test_top_of_trunk_is_the_whole_model(tiny_model_config, fine_tune_blocks):
    keras.utils.set_random_seed(0)
    model = vary_weights(build_model(tiny_model_config, TINY_SIZE))
    trunk, top = split_model(model, fine_tune_blocks)
    images = _images(4).astype(np.float32) / 255.0
    expected = model.predict_on_batch(images)
    assert expected[:, 0].std() > 1e-2, "predictions should vary across images, or the comparison proves nothing"
    np.testing.assert_allclose(top.predict_on_batch(trunk.predict_on_batch(images)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fine_tune_blocks", [0, 1, 3])
def test_trunk_is_frozen_and_top_trains_exactly_the_tuned_weights(tiny_model_config, fine_tune_blocks):
    model = build_model(tiny_model_config, TINY_SIZE)
    trunk, top = split_model(model, fine_tune_blocks)
    set_fine_tuning(model, fine_tune_blocks)
    assert trunk.trainable_weights == []  # so its cached output stays valid for the whole run
    assert {id(w) for w in top.trainable_weights} == {id(w) for w in model.trainable_weights}


def test_training_the_top_on_cached_activations_equals_training_the_model(tiny_model_config):
    """One Adam step on cached activations moves the weights exactly as a step on the images would."""
    config = ModelConfig(weights="none", dense_units=8, dropout=0.0)
    views = [next(augmented_views(_images(8), config, view, seed=3)) for view in range(2)]
    # The views are already augmented: the model trained on them whole must not augment them again.
    unaugmented = ModelConfig(weights="none", dense_units=8, dropout=0.0, flip="none", rotation=0.0)
    labels = np.arange(8) % 2
    trained = []
    for cached in (True, False):
        keras.utils.set_random_seed(0)
        model = vary_weights(build_model(unaugmented, TINY_SIZE))  # real gradients: Adam moves weights ~1e-2, not 1e-8
        set_fine_tuning(model, 1)
        initial = model.get_weights()
        trunk, top = split_model(model, 1)
        fitted = top if cached else model
        fitted.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
        for batch in views:
            fitted.train_on_batch(trunk.predict_on_batch(batch) if cached else batch, labels)
        trained.append(model.get_weights())
    moved = [np.abs(after - before).max() for after, before in zip(trained[1], initial, strict=True)]
    assert sorted(moved)[-8] > 1e-3, "the tuned block's and the head's weights should have moved"
    for cached_weights, full_weights, step in zip(*trained, moved, strict=True):  # 1e-3 of each weight's move
        np.testing.assert_allclose(cached_weights, full_weights, rtol=0, atol=max(1e-3 * step, 1e-7))


def test_views_are_the_image_then_seeded_augmentations():
    config = ModelConfig(rotation=0.1)
    images = _images(6)
    clean = next(augmented_views(images, config, 0, seed=1))
    np.testing.assert_array_equal(clean, images.astype(np.float32) / 255.0)
    first = next(augmented_views(images, config, 1, seed=1))
    assert first.shape == clean.shape
    assert first.dtype == np.float32
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    np.testing.assert_array_equal(first, next(augmented_views(images, config, 1, seed=1)))  # seeded
    assert not np.allclose(first, clean)
    assert not np.allclose(first, next(augmented_views(images, config, 2, seed=1)))
    assert not np.allclose(first, next(augmented_views(images, config, 1, seed=2)))


def test_views_without_augmentation_are_the_image():
    images = _images(3)
    plain = ModelConfig(flip="none", rotation=0.0)
    np.testing.assert_array_equal(next(augmented_views(images, plain, 2, seed=0)), images.astype(np.float32) / 255.0)


def test_cache_holds_every_view_of_every_image(tiny_model_config):
    model = vary_weights(build_model(tiny_model_config, TINY_SIZE))
    trunk, _ = split_model(model, 1)
    images = _images(5)
    cache = cache_activations(trunk.predict_on_batch, images, tiny_model_config, 3, seed=0, progress=False, batch_size=2)
    assert cache.shape == (3, 5, *trunk.output_shape[1:])
    expected = trunk.predict_on_batch(images.astype(np.float32) / 255.0)
    # float32 sums in another batch size differ in the last bits: relative to the activations' size (~10)
    np.testing.assert_allclose(cache[0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert np.abs(cache[1] - cache[0]).max() > 0.01 * np.abs(cache[0]).max()  # view 1 is augmented


def test_cached_batches_depend_only_on_seed_and_epoch():
    activations = np.arange(3 * 10, dtype=np.float32).reshape(3, 10, 1)  # value = view * 10 + image
    labels = np.arange(10) % 2
    batches = CachedViews(activations, labels, batch_size=4, shuffle=True, seed=7)

    def epoch(number):
        batches.set_epoch(number)
        return [batches[i] for i in range(len(batches))]

    first = epoch(1)
    shown = np.concatenate([x[:, 0] for x, _ in first]).astype(int)
    assert sorted(shown % 10) == list(range(10))  # every image once per epoch ...
    assert set(shown // 10) == {0, 1, 2}  # ... each as one of its views
    np.testing.assert_array_equal(np.concatenate([y for _, y in first]), labels[shown % 10])
    again = epoch(1)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(shown, np.concatenate([x[:, 0] for x, _ in epoch(2)]).astype(int))


def test_unshuffled_single_view_batches_are_the_cache_in_order():
    activations = np.arange(7, dtype=np.float32).reshape(1, 7, 1)
    batches = CachedViews(activations, np.zeros(7, int), batch_size=3)
    np.testing.assert_array_equal(np.concatenate([batches[i][0] for i in range(len(batches))]), activations[0])


def test_split_refuses_an_impossible_block_count(tiny_model_config):
    with pytest.raises(ValueError, match="Received: fine_tune_blocks=17"):
        split_model(build_model(tiny_model_config, TINY_SIZE), 17)


@pytest.mark.parametrize("fine_tune_blocks", [0, 1, 3, 16])
def test_onnx_trunk_matches_the_keras_trunk(tiny_model_config, fine_tune_blocks):
    keras.utils.set_random_seed(0)
    model = build_model(tiny_model_config, 64)  # 64 px: stride-2 'same' padding on even sizes
    _randomize_batch_norm_statistics(model)
    trunk, _ = split_model(model, fine_tune_blocks)
    run, runtime = trunk_function(model, fine_tune_blocks)
    assert runtime == "onnxruntime"
    images = np.random.default_rng(1).random((3, 64, 64, 3), dtype=np.float32)
    expected = trunk.predict_on_batch(images)
    np.testing.assert_allclose(run(images), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.imagenet
def test_onnx_trunk_matches_the_keras_trunk_on_imagenet_weights(imagenet_weights):
    model = build_model(ModelConfig(), 224)
    trunk, _ = split_model(model, 1)
    run, _ = trunk_function(model, 1)
    images = np.random.default_rng(2).random((2, 224, 224, 3), dtype=np.float32)
    expected = trunk.predict_on_batch(images)
    np.testing.assert_allclose(run(images), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_layer_without_translation_is_refused_with_its_name():
    from dogcat.onnx_graph import _GraphBuilder, _translate

    with pytest.raises(UnsupportedLayer, match="Received: layer=odd_pool"):
        _translate(_GraphBuilder(None), keras.layers.MaxPooling2D(name="odd_pool"), ["x"], (None, 4, 4, 3))


def _randomize_batch_norm_statistics(model):
    """Untrained BatchNorm layers are identities; give them real statistics so the test can fail."""
    rng = np.random.default_rng(0)
    for layer in model.get_layer("mobilenet_v2").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            randomize_batch_norm(layer, rng)
