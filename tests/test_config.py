from pathlib import Path

import pytest

from dogcat.config import Config, ConfigError, load_config

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
