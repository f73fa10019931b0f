from pathlib import Path

import pytest

from dogcat.config import Config, ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


def test_default_toml_is_the_builtin_defaults():
    assert load_config(REPO / "configs/default.toml") == Config()


def test_overrides_are_typed_toml_values():
    config = load_config(None, ["train.epochs=3", "train.learning_rate=1e-4", "model.weights=none", "data.dir=x/y"])
    assert config.train.epochs == 3
    assert config.train.learning_rate == 1e-4
    assert config.model.weights == "none"
    assert config.data.dir == "x/y"


def test_integer_is_accepted_for_a_float_key():
    assert load_config(None, ["model.dropout=0"]).model.dropout == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "Unknown key in [train]"),
        ("training.epochs=3", "Unknown config section"),
        ("train.epochs=three", "train.epochs must be int"),
        ("epochs=3", "section.key=value"),
    ],
)
def test_bad_overrides_are_refused_with_the_received_value(override, message):
    with pytest.raises(ConfigError, match="Received") as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(None, ["train.epochs=4", 'data.dir="a \\"quoted\\" dir"'])
    (tmp_path / "config.toml").write_text(config.to_toml())
    assert load_config(tmp_path / "config.toml") == config


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


# --- every setting is range-checked when the config is loaded, before anything is built -----------


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
