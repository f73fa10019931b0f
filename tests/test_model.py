import keras
import numpy as np
import pytest

from dogcat.artifacts import ArtifactError
from dogcat.config import ModelConfig
from dogcat.model import (
    BASE_NAME,
    build_model,
    image_size_of,
    load_model,
    set_fine_tuning,
)
from tests.helpers import TINY_SIZE, vary_weights


def _trainable_base_layers(model):
    return {layer.name for layer in model.get_layer(BASE_NAME).layers if layer.trainable and layer.weights}


def test_only_the_last_block_and_final_conv_are_fine_tuned(tiny_model_config):
    model = build_model(tiny_model_config, TINY_SIZE)
    tuned = _trainable_base_layers(model)
    assert tuned == {"block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"}
    set_fine_tuning(model, 0)
    assert _trainable_base_layers(model) == set()
    set_fine_tuning(model, 2)
    assert {name.split("_")[1] for name in _trainable_base_layers(model) if name.startswith("block_")} == {"15", "16"}
    with pytest.raises(ValueError, match="Received: fine_tune_blocks=17"):
        set_fine_tuning(model, 17)


def test_fine_tuning_keeps_batchnorm_statistics_frozen(tiny_model_config):
    model = build_model(tiny_model_config, TINY_SIZE, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    base, head = model.get_layer(BASE_NAME), model.get_layer("probabilities")
    bn, conv = base.get_layer("block_16_expand_BN"), base.get_layer("block_16_expand")
    assert conv.kernel.path in {v.path for v in model.trainable_weights}
    before = {name: np.array(getattr(bn, name)) for name in ("moving_mean", "moving_variance", "gamma")}
    head_before = np.array(head.bias)
    images = np.random.default_rng(0).random((8, TINY_SIZE, TINY_SIZE, 3), dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # unbalanced, so the bias gradient is non-zero
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(np.array(head.bias), head_before), "fit should have trained something"
    for name, value in before.items():
        np.testing.assert_array_equal(np.array(getattr(bn, name)), value, err_msg=name)


def test_model_maps_unit_range_to_mobilenet_range(tiny_model_config):
    model = build_model(tiny_model_config, TINY_SIZE)
    scaling = model.get_layer("to_mobilenet_range")
    out = keras.ops.convert_to_numpy(scaling(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    np.testing.assert_allclose(out, [[-1.0, 0.0, 1.0]])
    assert image_size_of(model) == TINY_SIZE


def test_augmentation_is_off_at_inference(tiny_model_config):
    config = ModelConfig(weights="none", dense_units=8, dropout=0.0, flip="horizontal_and_vertical", rotation=0.25)
    model = vary_weights(build_model(config, TINY_SIZE, seed=0))
    images = np.random.default_rng(1).random((4, TINY_SIZE, TINY_SIZE, 3), dtype=np.float32)
    augmented = keras.ops.convert_to_numpy(model(images, training=True))  # dropout is 0: only augmentation differs
    first = keras.ops.convert_to_numpy(model(images, training=False))
    # Augmentation changes this model's output, so an augmentation layer left on at inference would show.
    assert np.abs(augmented - first).max() > 1e-2
    np.testing.assert_array_equal(first, keras.ops.convert_to_numpy(model(images, training=False)))
    np.testing.assert_allclose(model.predict_on_batch(images), first, rtol=1e-5, atol=1e-6)


def test_save_and_load_give_identical_predictions(tmp_path, tiny_model_config):
    model = vary_weights(build_model(tiny_model_config, TINY_SIZE, seed=0))
    images = np.random.default_rng(2).random((4, TINY_SIZE, TINY_SIZE, 3), dtype=np.float32)
    expected = model.predict_on_batch(images)
    assert expected[:, 0].std() > 1e-2, "predictions should vary across images, or the comparison proves nothing"
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(expected, loaded.predict_on_batch(images))
    for saved, reloaded in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, reloaded)


def test_unsafe_model_file_is_refused(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(ArtifactError, match="Could not load model"):
        load_model(tmp_path / "lambda.keras")


def test_missing_and_misnamed_model_files_are_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_model(tmp_path / "nope.keras")
    with pytest.raises(ArtifactError, match=r"Expected a \.keras"):
        load_model(tmp_path / "model.h5")


def test_missing_imagenet_weights_offline_say_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ArtifactError) as error:
        build_model(ModelConfig(), TINY_SIZE)
    message = str(error.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in message
    assert str(tmp_path / "models") in message
    assert "\n" not in message


@pytest.mark.imagenet
def test_imagenet_weights_load_from_the_cache_at_any_size(imagenet_weights):
    first = build_model(ModelConfig(), 96).get_layer(BASE_NAME).get_layer("Conv1").kernel
    second = build_model(ModelConfig(), 224).get_layer(BASE_NAME).get_layer("Conv1").kernel
    np.testing.assert_array_equal(np.array(first), np.array(second))  # random init would differ
