"""The classifier: MobileNetV2 features and a small head, taking float32 images in [0, 1].

The model owns everything between a [0, 1] image and the probabilities: augmentation (active
only in training), MobileNetV2's scaling to [-1, 1], the base (always called with
training=False so BatchNorm keeps its ImageNet statistics while the last blocks fine-tune),
and the head. Callers never scale pixels themselves.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras
import numpy as np

from dogcat.artifacts import ArtifactError
from dogcat.config import ModelConfig

BASE_NAME = "mobilenet_v2"  # fixed, so it does not depend on image size
IMAGENET_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
NUM_MOBILENET_BLOCKS = 16  # inverted-residual blocks block_1 .. block_16
# A .keras file is a zip that Keras inflates while loading; this classifier is ~10 MB inflated.
# The zip's central directory states each member's size, and zipfile never inflates a member past
# it, so checking the sum first bounds memory and disk before Keras reads a byte.
MAX_MODEL_UNCOMPRESSED_BYTES = 1 << 30
HEAD_LAYERS = ("pool", "dense", "dropout", "probabilities")  # after the base, in order


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def build_model(config: ModelConfig, image_size: int = 224, num_classes: int = 2, seed: int | None = None) -> keras.Model:
    """Build the classifier with the base frozen except its last `config.fine_tune_blocks` blocks."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for layer in augmentation_layers(config, seed):
        x = layer(x)
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_mobilenet_range")(x)  # [0, 1] -> [-1, 1]
    base = _mobilenet_v2(config.weights, image_size)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(config.dropout, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="dogcat")
    set_fine_tuning(model, config.fine_tune_blocks)
    return model


def augmentation_layers(config: ModelConfig, seed: int | None = None) -> list[keras.layers.Layer]:
    """The training augmentation (active only in training): a random flip, then a random rotation.

    The two get different seeds: with one seed they would draw the same random numbers, tying
    each image's flip to its rotation angle.
    """
    layers: list[keras.layers.Layer] = []
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed, name="random_flip"))
    if config.rotation > 0:
        rotation_seed = None if seed is None else seed + 1
        layers.append(
            keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=rotation_seed, name="random_rotation")
        )
    return layers


def _mobilenet_v2(weights: str, image_size: int) -> keras.Model:
    if weights.lower() == "none":
        weights_path = None
    elif weights == "imagenet":
        weights_path = imagenet_weights_path()
    elif Path(weights).is_file():
        weights_path = weights
    else:
        raise ArtifactError(f"MobileNetV2 weights must be 'imagenet', 'none' or an existing file. Received: weights={weights!r}")
    # The no-top convolution weights do not depend on the input size, so the 224-px file serves
    # every size (Keras itself would look for a per-size file that this project does not need).
    return keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, weights=weights_path, name=BASE_NAME
    )


def imagenet_weights_path() -> str:
    """The MobileNetV2 ImageNet no-top weights: from the Keras cache, else downloaded by Keras."""
    cached = keras_cache_dir() / IMAGENET_WEIGHTS_FILE
    if cached.is_file():
        return str(cached)
    from keras.src.applications.mobilenet_v2 import BASE_WEIGHT_PATH

    try:
        return keras.utils.get_file(IMAGENET_WEIGHTS_FILE, BASE_WEIGHT_PATH + IMAGENET_WEIGHTS_FILE, cache_subdir="models")
    except Exception as error:
        raise ArtifactError(
            f"MobileNetV2 ImageNet weights are missing and could not be downloaded ({_first_line(error)}). "
            f"Put {IMAGENET_WEIGHTS_FILE} in {keras_cache_dir()} (or set KERAS_HOME), or use model.weights=none. "
            f"Received: weights='imagenet'"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def set_fine_tuning(model: keras.Model, fine_tune_blocks: int) -> None:
    """Freeze the base, then unfreeze the convolutions of its last `fine_tune_blocks` blocks and
    of the final 1x1 conv. The head always trains.

    BatchNormalization layers stay frozen everywhere. Calling the base with training=False is
    not enough in Keras 3: `fit` passes training=True down through nested models and it wins
    (keras-team/keras#20285), but a BatchNormalization with trainable=False always runs in
    inference mode, keeping its ImageNet statistics. Recompile after calling this: Keras fixes
    the trainable set at compile time.
    """
    if not 0 <= fine_tune_blocks <= NUM_MOBILENET_BLOCKS:
        raise ValueError(
            f"fine_tune_blocks must be in [0, {NUM_MOBILENET_BLOCKS}]. Received: fine_tune_blocks={fine_tune_blocks}"
        )
    base = model.get_layer(BASE_NAME)
    base.trainable = fine_tune_blocks > 0
    first = NUM_MOBILENET_BLOCKS + 1 - fine_tune_blocks
    tuned = (*(f"block_{i}_" for i in range(first, NUM_MOBILENET_BLOCKS + 1)), "Conv_1")
    for layer in base.layers:
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = fine_tune_blocks > 0 and layer.name.startswith(tuned) and not is_batch_norm


def with_features(model: keras.Model, feature_map: bool = False) -> keras.Model:
    """The classifier with a second output: the detector's features (dogcat.detector.FEATURE_BLOCKS).

    Shares `model`'s layers and weights. The second output is the head's pooled features and
    the pooled outputs of the named base layers, side by side, from the same forward pass.
    With `feature_map`, a third: the base's output (N, H, W, K) that Grad-CAM reads
    (dogcat.explain); a separate model, so plain predictions never compute or copy it.
    Raises ValueError for a model that is not a dogcat classifier (no base, or no such layers).
    """
    from dogcat.detector import FEATURE_BLOCKS

    base = model.get_layer(BASE_NAME)
    inner = [base.get_layer(name).output for name, _ in FEATURE_BLOCKS if name != HEAD_LAYERS[0]]
    tapped = keras.Model(base.input, [base.output, *inner], name="base_with_taps")
    inputs = keras.Input(model.input_shape[1:], name="image")
    top, *taps = tapped(model.get_layer("to_mobilenet_range")(inputs), training=False)
    pooled = {HEAD_LAYERS[0]: model.get_layer(HEAD_LAYERS[0])(top)}
    for (name, _), tap in zip([b for b in FEATURE_BLOCKS if b[0] != HEAD_LAYERS[0]], taps, strict=True):
        pooled[name] = keras.layers.GlobalAveragePooling2D(name=f"pooled_{name}")(tap)
    x = pooled[HEAD_LAYERS[0]]
    for name in HEAD_LAYERS[1:]:
        x = model.get_layer(name)(x)
    features = keras.layers.Concatenate(name="features")([pooled[name] for name, _ in FEATURE_BLOCKS])
    if feature_map:
        return keras.Model(inputs, [x, features, top], name="dogcat_with_feature_map")
    return keras.Model(inputs, [x, features], name="dogcat_with_features")


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a `.keras` classifier with safe_mode on (no arbitrary code from the file)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ArtifactError(f"Expected a .keras model file. Received: path={str(path)!r}")
    if not path.is_file():
        raise ArtifactError(f"Model file not found. Received: path={str(path)!r}")
    _check_zip_size(path)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:
        raise ArtifactError(f"Could not load model ({type(error).__name__}: {error}). Received: path={str(path)!r}") from None
    # NaN or infinite weights answer every photo with NaN: refused here, so predict, the apps and export never serve them.
    damaged = [w.path for w in model.weights if not np.isfinite(keras.ops.convert_to_numpy(w)).all()]
    if damaged:
        raise ArtifactError(f"The model has non-finite weights (NaN or infinity) in {len(damaged)} variable(s), first "
                            f"{damaged[0]}. Received: path={str(path)!r}")
    return model


def _check_zip_size(path: Path) -> None:
    """Refuse a .keras file that is not a zip or would inflate past MAX_MODEL_UNCOMPRESSED_BYTES."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ArtifactError(f"Could not load model (not a .keras zip archive: {error}). Received: path={str(path)!r}") from None
    if total > MAX_MODEL_UNCOMPRESSED_BYTES:
        raise ArtifactError(
            f"Model file would inflate to {total / 2**20:.0f} MiB, over the {MAX_MODEL_UNCOMPRESSED_BYTES / 2**20:.0f} MiB "
            f"limit. Received: path={str(path)!r}"
        )


def image_size_of(model: keras.Model) -> int:
    """The square input size the model was built for; preprocessing is derived from it."""
    _, height, width, _ = model.input_shape
    if height != width or height is None:
        raise ArtifactError(f"Expected a square fixed-size image input. Received: input_shape={model.input_shape}")
    return int(height)
