"""Every setting is range-checked when the config is loaded, before anything is built."""

import pytest

from dogcat.config import Config, ConfigError, load_config, validate_config


@pytest.mark.parametrize(
    "override",
    [
        "train.learning_rate=nan", "train.learning_rate=inf", "train.learning_rate=0", "train.fine_tune_learning_rate=-1e-4",
        "train.epochs=0", "train.head_epochs=-1", "train.batch_size=0", "train.views=-1",
        "train.early_stopping_patience=-1", "train.seed=-1", 'train.output_dir=""',
        "model.fine_tune_blocks=99", "model.fine_tune_blocks=-1", "model.dense_units=0",
        "model.dropout=2.0", "model.dropout=1.0", "model.dropout=-0.1", "model.dropout=nan",
        "model.rotation=0.6", "model.rotation=-0.1", 'model.flip="diagonal"', 'model.weights="imagenett"', 'model.weights=""',
        "data.image_size=7", "data.image_size=4096", 'data.dir=""',
        "predict.threshold=0.4", "predict.threshold=1.5", "predict.threshold=nan", "predict.batch_size=0",
        "predict.batch_size=100000000",  # each photo holds about 15 MB in the network: 1e8 took 22 GB
    ],
)
def test_nonsense_settings_are_one_line_errors_naming_the_setting(override):
    name = override.partition("=")[0]
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{name} must be ")
    assert f"Received: {name}=" in message


def test_nan_in_a_config_file_is_refused(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nlearning_rate = nan\n")
    with pytest.raises(ConfigError, match=r"finite number\. Received: train\.learning_rate=nan$"):
        load_config(tmp_path / "c.toml")


@pytest.mark.parametrize(
    "override",
    [
        "model.fine_tune_blocks=0", "model.fine_tune_blocks=16", "model.dropout=0", "model.rotation=0",
        "model.rotation=0.5", 'model.flip="none"', 'model.flip="horizontal_and_vertical"', "model.weights=none",
        'model.weights="weights/mobilenet.h5"', "data.image_size=32", "train.head_epochs=0", "train.views=0",
        "train.early_stopping_patience=0", "predict.threshold=0.5", "predict.threshold=1",
    ],
)
def test_edge_values_are_accepted(override):
    load_config(None, [override])


def test_a_config_built_in_python_is_checked_too():
    config = Config()
    validate_config(config)
    config.train.batch_size = 0
    with pytest.raises(ConfigError, match=r"Received: train\.batch_size=0$"):
        validate_config(config)


@pytest.mark.parametrize("content", [b"[predict]\nthreshold = 0.7 # caf\xe9\n", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n"],
                         ids=["not-utf8", "nested-too-deeply"])
def test_a_damaged_config_file_is_one_line(tmp_path, content):
    (tmp_path / "c.toml").write_bytes(content)
    with pytest.raises(ConfigError, match=r"^Config file is not valid TOML \(.*\)\. Received: path=") as error:
        load_config(tmp_path / "c.toml")
    assert "\n" not in str(error.value)
