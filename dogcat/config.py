"""The run configuration: defaults in one place, a TOML file on top, `key=value` flags on top of that.

Sections and keys are fixed by the dataclasses below, so a typo in a config file or a flag is an
error, not a silently ignored setting. The resolved config is written next to every run.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogcat.errors import DogcatError


@dataclass
class DataConfig:
    dir: str = "data/dogcat-4k"  # output of `dogcat data prepare`
    image_size: int = 224


@dataclass
class ModelConfig:
    weights: str = "imagenet"  # "imagenet", "none", or a path to a MobileNetV2 no-top weights file
    fine_tune_blocks: int = 1  # how many of MobileNetV2's last inverted-residual blocks to train
    dense_units: int = 128
    dropout: float = 0.2
    flip: str = "horizontal"  # RandomFlip mode; "none" disables
    rotation: float = 0.05  # RandomRotation factor, a fraction of a full turn (0.05 = +/-18 deg)


@dataclass
class TrainConfig:
    seed: int = 42
    epochs: int = 10  # total, head-only epochs included
    head_epochs: int = 2  # epochs with the whole base frozen before fine-tuning starts
    batch_size: int = 32
    learning_rate: float = 1e-3  # head-only phase
    fine_tune_learning_rate: float = 1e-4  # small, so the pretrained block is nudged, not wrecked
    early_stopping_patience: int = 3  # epochs without val_loss improvement; 0 disables
    # Fixed augmented views per training image whose frozen-trunk activations are computed once
    # (dogcat.features); 0 runs the whole network every step with fresh augmentation (slow).
    views: int = 2
    # Fit a softmax temperature on the validation split and fold it into the last layer
    # (dogcat.calibration): better log loss, same predicted labels.
    calibrate: bool = True
    output_dir: str = "runs"


@dataclass
class PredictConfig:
    threshold: float = 0.6  # below this top probability the verdict is "unsure"
    batch_size: int = 32
    # Photos whose shorter side is below this many pixels are "too small to judge": below it,
    # accuracy on scaled-down test photos falls under 95% (benchmarks/verdicts.py).
    min_side: int = 80
    # The "neither" detector's distance thresholds, set when it is fitted (end of `dogcat train`,
    # `dogcat detector fit`) on out-of-fold distances of the training and validation cats and dogs:
    # at most this share of them is far enough to be turned away ("neither" unless ImageNet sees a pet) ...
    turn_away: float = 0.005
    # ... and at most this share unusual enough to be "unsure".
    unsure_share: float = 0.02


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
            lines.append("")
        return "\n".join(lines)


class ConfigError(DogcatError, ValueError):
    """A config file or override that does not fit the schema."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `section.key=value` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Config file not found. Received: path={str(path)!r}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"Config file is not valid TOML ({error}). Received: path={str(path)!r}") from None
        except RecursionError:  # tomllib recurses into nested arrays and tables
            raise ConfigError(f"Config file is not valid TOML (nested too deeply). Received: path={str(path)!r}") from None
        for section, values in table.items():
            if not isinstance(values, dict):
                raise ConfigError(f"Top-level keys must be [sections]. Received: {section}={values!r}")
            for key, value in values.items():
                _set(config, section, key, value)
    for override in overrides:
        dotted, sep, raw = override.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"Overrides look like section.key=value. Received: override={override!r}")
        _set(config, section, key, _parse_value(raw.strip()))
    validate_config(config)
    return config


# Allowed values, checked once the whole config is assembled (so every entry point gets the same
# checks), before anything is built: a bad value otherwise surfaces as a traceback deep in Keras,
# or worse, as NaN probabilities. A key without a rule here is only type-checked.
MAX_PREDICT_BATCH = 128
_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical", "none")
_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "data.dir": ("a non-empty path", lambda v: v.strip() != ""),
    "data.image_size": ("in [32, 1024] (MobileNetV2's smallest input is 32 px)", lambda v: 32 <= v <= 1024),
    "model.weights": (
        "'imagenet', 'none' or the path of a .h5 weights file",
        lambda v: v == "imagenet" or v.lower() == "none" or (v.strip() != "" and v.endswith(".h5")),
    ),
    "model.fine_tune_blocks": ("in [0, 16] (MobileNetV2 has 16 blocks)", lambda v: 0 <= v <= 16),
    "model.dense_units": ("at least 1", lambda v: v >= 1),
    "model.dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "model.flip": (f"one of {', '.join(_FLIP_MODES)}", lambda v: v in _FLIP_MODES),
    "model.rotation": ("in [0, 0.5] (a fraction of a full turn)", lambda v: 0 <= v <= 0.5),
    "train.seed": ("in [0, 2**31 - 2]", lambda v: 0 <= v <= 2**31 - 2),
    "train.epochs": ("at least 1", lambda v: v >= 1),
    "train.head_epochs": ("0 or more", lambda v: v >= 0),
    "train.batch_size": ("at least 1", lambda v: v >= 1),
    "train.learning_rate": ("a finite number > 0", lambda v: v > 0),
    "train.fine_tune_learning_rate": ("a finite number > 0", lambda v: v > 0),
    "train.early_stopping_patience": ("0 (off) or more", lambda v: v >= 0),
    "train.views": ("0 (no cache) or more", lambda v: v >= 0),
    "train.output_dir": ("a non-empty path", lambda v: v.strip() != ""),
    "predict.threshold": ("in [0.5, 1]", lambda v: 0.5 <= v <= 1),
    # At most MAX_PREDICT_BATCH: each photo in the network holds about 15 MB (float32), and 1e8 took 22 GB.
    "predict.batch_size": (f"in [1, {MAX_PREDICT_BATCH}]", lambda v: 1 <= v <= MAX_PREDICT_BATCH),
    "predict.min_side": ("0 (off) or more", lambda v: v >= 0),
    "predict.turn_away": ("in (0, 0.5)", lambda v: 0 < v < 0.5),
    "predict.unsure_share": ("in (0, 0.5)", lambda v: 0 < v < 0.5),
}


def validate_config(config: Config) -> None:
    """Raise ConfigError for the first value outside its allowed range; NaN and infinity never pass."""
    for section, values in config.to_dict().items():
        for key, value in values.items():
            name = f"{section}.{key}"
            rule = _RULES.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number. Received: {name}={value!r}")
            if rule is not None and not rule[1](value):
                raise ConfigError(f"{name} must be {rule[0]}. Received: {name}={value!r}")
    if config.predict.turn_away > config.predict.unsure_share:  # "neither" by distance would take the "unsure" band
        raise ConfigError(f"predict.turn_away must be at most predict.unsure_share ({config.predict.unsure_share}). "
                          f"Received: predict.turn_away={config.predict.turn_away}")
    if config.train.head_epochs > config.train.epochs:  # the fine-tuning phase would never start
        raise ConfigError(f"train.head_epochs must be at most train.epochs ({config.train.epochs}). "
                          f"Received: train.head_epochs={config.train.head_epochs}")


def _set(config: Config, section: str, key: str, value: Any) -> None:
    sections = {f.name for f in dataclasses.fields(config)}
    if section not in sections:
        raise ConfigError(f"Unknown config section; expected one of {sorted(sections)}. Received: section={section!r}")
    target = getattr(config, section)
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(
            f"Unknown key in [{section}]; expected one of {sorted(fields)}. Received: key={key!r}"
        )
    expected = type(getattr(target, key))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise ConfigError(
            f"{section}.{key} must be {expected.__name__}. Received: {section}.{key}={value!r}"
        )
    setattr(target, key, value)


def _parse_value(raw: str) -> Any:
    """A flag value is read as a TOML value (`3`, `1e-4`, `true`, `"x"`); anything else is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
