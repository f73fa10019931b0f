"""Verdicts: cat, dog, neither, unsure or too small, decided in one place for every path.

The seed's question is whether a photo *contains* a cat or a dog, but the classifier has only
two outputs and calls a car a cat. The verdict adds what the classifier cannot say:

- **neither**: the photo's features are unlike every training photo's. The `Detector` reads two
  feature vectors that one forward pass gives (`FEATURE_BLOCKS`): the classifier's
  pooled 1,280-wide features, and the 160-wide pooled output of MobileNetV2's frozen ImageNet
  trunk (block_15), which still tells a lion or a cow from a house cat where the fine-tuned
  features have been pulled towards "cat" or "dog". For each, it keeps the cat and dog means
  and one shared, shrunk covariance of the training photos (Ledoit-Wolf) and measures the
  Mahalanobis distance to the nearer class mean (Lee et al. 2018); the two distances are put
  on one scale by their validation mean and spread and added. The threshold is set on the
  validation split so that a chosen share of real cats and dogs (default 1%) is turned away.
  Chosen against k-nearest-neighbour and single-layer variants on photos of neither
  (benchmarks/verdicts.py, README).
- **too small**: the shorter side is below `min_side`, where accuracy falls under 95%
  (benchmarks/verdicts.py measures the curve).
- **unsure**: the top probability is below the threshold (`predict.threshold`).

The detector is its own artifact, `dog_cat_detector.npz` beside the `.keras` (NumPy arrays and a
JSON header, loaded with allow_pickle=False: no code runs), tied to the `.keras` by sha256 like
the ONNX twin; the classifier itself is the seed's, unchanged. A missing or stale detector means
cat/dog verdicts only, with a one-line warning that names the file and the command that refits it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dogcat.artifacts import DETECTOR_FILENAME, ArtifactError, file_sha256, save_atomic
from dogcat.config import ConfigError, PredictConfig

CAT, DOG, NEITHER, UNSURE, TOO_SMALL = "cat", "dog", "neither", "unsure", "too_small"
VERDICTS = (CAT, DOG, NEITHER, UNSURE, TOO_SMALL)
DETECTOR_FORMAT = 2
METHOD = "mahalanobis"
MAX_DETECTOR_BYTES = 256 * 2**20  # a sane bound before np.load reads anything
# The detector's input, one row per photo: these tensors of the classifier, each globally
# average-pooled, side by side. Both runtimes return exactly this as "features": Keras
# (dogcat.model.with_features) and the ONNX twin (dogcat.onnx_graph).
FEATURE_BLOCKS = (
    ("pool", 1280),  # the head's GlobalAveragePooling2D: the fine-tuned base's output
    ("block_15_add", 160),  # MobileNetV2's frozen ImageNet trunk, the input of the fine-tuned block_16
)


@dataclass
class FeatureBlock:
    """One feature vector's part of the detector: class means, shared precision, validation scale."""

    name: str
    means: np.ndarray  # (classes, width) of the L2-normalised training features
    precision: np.ndarray  # (width, width): inverse of the shared, shrunk class covariance
    val_mean: float  # the validation photos' distances, to put blocks on one scale
    val_std: float
    _cache: tuple = field(default=(), repr=False, compare=False)

    @property
    def width(self) -> int:
        return self.means.shape[1]

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each L2-normalised row to the nearest class mean."""
        if not self._cache:  # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm; m'P and m'Pm once
            precision = self.precision.astype(np.float32)
            means_precision = self.means @ precision
            self._cache = (precision, means_precision, np.einsum("cd,cd->c", means_precision, self.means))
        precision, means_precision, means_term = self._cache
        x = _normalise(features)
        distances = np.einsum("nd,nd->n", x @ precision, x)[:, None] - 2 * x @ means_precision.T + means_term
        return distances.min(axis=1)

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return (self.distances(features) - self.val_mean) / self.val_std


@dataclass
class Detector:
    """Class-conditional Mahalanobis novelty detector on the classifier's feature blocks."""

    blocks: list[FeatureBlock]
    threshold: float  # scores above it are "neither"
    keras_sha256: str  # the .keras file whose features these are
    info: dict  # how it was fitted (counts, share turned away on val): for model cards

    @property
    def width(self) -> int:
        return sum(block.width for block in self.blocks)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The sum of each block's standardised distance; higher is less like a training photo."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.width:
            raise ArtifactError(f"Detector expects features of width {self.width}. Received: shape={features.shape}")
        total, start = np.zeros(len(features), np.float32), 0
        for block in self.blocks:
            total += block.standardised(features[:, start : start + block.width])
            start += block.width
        return total

    def flags(self, features: np.ndarray) -> np.ndarray:
        """True where a photo is "neither": its score is above the threshold."""
        return self.scores(features) > self.threshold

    def save(self, path: str | Path) -> None:
        header = {
            "format": DETECTOR_FORMAT, "method": METHOD, "threshold": self.threshold,
            "keras_sha256": self.keras_sha256, "info": self.info,
            "blocks": [{"name": b.name, "val_mean": b.val_mean, "val_std": b.val_std} for b in self.blocks],
        }
        arrays = {"header": np.array(json.dumps(header))}
        for index, block in enumerate(self.blocks):
            # float16 halves the file; the scale keeps the precision's large entries in range.
            scale = float(np.abs(block.precision).max()) or 1.0
            arrays[f"means_{index}"] = block.means.astype(np.float32)
            arrays[f"precision_{index}"] = (block.precision / scale).astype(np.float16)
            arrays[f"precision_scale_{index}"] = np.array(scale, np.float64)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez_compressed(handle, **arrays)

        save_atomic(path, write)

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Read a detector file; any malformed file is an ArtifactError, never executed."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"Detector file not found. Received: path={str(path)!r}")
        if path.stat().st_size > MAX_DETECTOR_BYTES:
            raise ArtifactError(f"Detector file is over {MAX_DETECTOR_BYTES // 2**20} MiB. Received: path={str(path)!r}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"][()]))
                valid = header.get("format") == DETECTOR_FORMAT and header.get("method") == METHOD
                blocks = [
                    FeatureBlock(
                        str(spec["name"]), np.asarray(archive[f"means_{i}"], np.float32),
                        np.asarray(archive[f"precision_{i}"], np.float32) * float(archive[f"precision_scale_{i}"]),
                        float(spec["val_mean"]), float(spec["val_std"]),
                    )
                    for i, spec in enumerate(header["blocks"])
                ] if valid else []
            detector = cls(blocks, float(header["threshold"]), str(header["keras_sha256"]), dict(header.get("info", {})))
            valid = valid and bool(blocks) and math.isfinite(detector.threshold) and all(
                b.means.ndim == 2 and b.precision.shape == (b.width, b.width) and np.isfinite(b.precision).all()
                and np.isfinite(b.means).all() and b.val_std > 0 for b in blocks
            )
        except Exception as error:  # any damaged or foreign file: refuse it, in one line
            raise ArtifactError(f"Not a dogcat detector file ({type(error).__name__}). Received: path={str(path)!r}") from None
        if not valid:
            raise ArtifactError(f"Not a dogcat detector file (unexpected contents). Received: path={str(path)!r}")
        return detector


def fit_detector(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, keras_sha256: str,
    blocks: tuple[tuple[str, int], ...], turn_away: float = PredictConfig.turn_away,
) -> Detector:
    """A detector on the training photos' features, its threshold set on the validation photos.

    `blocks` names the consecutive parts of a feature row and their widths. Every feature must
    come from a real cat or dog. On the validation photos, the threshold calls at most
    `turn_away` of them "neither" (fewer on a small split: 1% of 50 photos is none).
    """
    if not 0 < turn_away < 0.5:
        raise ConfigError(f"turn_away must be in (0, 0.5). Received: turn_away={turn_away}")
    train_features, val_features = np.asarray(train_features, np.float64), np.asarray(val_features, np.float64)
    train_labels = np.asarray(train_labels)
    classes = np.unique(train_labels)
    if len(classes) < 2 or len(val_features) == 0 or sum(w for _, w in blocks) != train_features.shape[1]:
        raise ArtifactError(
            f"Need training photos of at least 2 classes, validation photos, and features of width "
            f"{sum(w for _, w in blocks)}. Received: classes={classes.tolist()}, {len(val_features)} validation photos, "
            f"width={train_features.shape[1]}"
        )
    fitted, start = [], 0
    for name, width in blocks:
        x = _normalise(train_features[:, start : start + width])
        means = np.stack([x[train_labels == c].mean(axis=0) for c in classes])
        centred = np.concatenate([x[train_labels == c] - means[i] for i, c in enumerate(classes)])
        precision = np.linalg.inv(_ledoit_wolf(centred))
        block = FeatureBlock(name, means.astype(np.float32), precision.astype(np.float32), 0.0, 1.0)
        val_distances = block.distances(val_features[:, start : start + width].astype(np.float32))
        block.val_mean, block.val_std = float(val_distances.mean()), float(val_distances.std()) or 1.0
        fitted.append(block)
        start += width
    detector = Detector(fitted, 0.0, keras_sha256, {})
    val_scores = detector.scores(val_features)
    # The largest share of validation photos not over `turn_away` lies strictly above the
    # (k+1)-th highest score, k = floor(turn_away * count): that score is the threshold.
    allowed = math.floor(turn_away * len(val_scores) + 1e-9)
    detector.threshold = float(np.sort(val_scores)[::-1][min(allowed, len(val_scores) - 1)])
    detector.info = {
        "train_photos": len(train_features), "val_photos": len(val_features), "turn_away_target": turn_away,
        "val_turned_away": float(np.mean(val_scores > detector.threshold)),
    }
    return detector


def _ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of centred rows: a well-conditioned estimate from 3,200 photos
    of 1,280 features, where the plain covariance is close to singular (Ledoit & Wolf 2004)."""
    count, width = centred.shape
    covariance = centred.T @ centred / count
    mu = np.trace(covariance) / width
    target_distance = np.sum((covariance - mu * np.eye(width)) ** 2) / width
    squared = centred**2
    spread = (np.sum(squared.T @ squared) / count - np.sum(covariance**2)) / count / width
    shrinkage = min(spread, target_distance) / target_distance if target_distance > 0 else 1.0
    return (1 - shrinkage) * covariance + shrinkage * mu * np.eye(width)


def fit_detector_beside(model_path: str | Path, data_dir: str | Path, turn_away: float = PredictConfig.turn_away,
                        log=print) -> Path:
    """Fit the detector for a `.keras` model on a prepared dataset and write it beside the model.

    Features come from the served path (`Classifier.predict`, ONNX Runtime when a matching
    export exists), for the training split (the reference) and the validation split (the threshold).
    """
    from dogcat.data import read_split
    from dogcat.inference import Classifier

    model_path = Path(model_path)
    classifier = Classifier.from_path(model_path)
    if not classifier.runner.has_features:
        raise ArtifactError(f"The model's runtime gives no pooled features (run `dogcat export {model_path}` again). "
                            f"Received: runtime={classifier.runtime!r}")
    features, labels = {}, {}
    for split in ("train", "val"):
        data = read_split(data_dir, split)
        predictions = classifier.predict(data.paths, names=[str(p) for p in data.paths])
        read = [i for i, p in enumerate(predictions) if p.error is None]
        if not read:
            raise ArtifactError(f"None of the {split} photos could be read. Received: data_dir={str(data_dir)!r}")
        features[split] = np.stack([predictions[i].features for i in read])
        labels[split] = np.asarray(data.labels)[read]
    detector = fit_detector(features["train"], labels["train"], features["val"], file_sha256(model_path),
                            FEATURE_BLOCKS, turn_away)
    path = model_path.with_name(DETECTOR_FILENAME)
    detector.save(path)
    log(f"detector: {path} ({len(features['train'])} training photos, threshold {detector.threshold:.4f}, "
        f"{detector.info['val_turned_away']:.1%} of val turned away)")
    return path


def detector_for(model_path: str | Path) -> tuple[Detector | None, str | None]:
    """(the detector beside `model_path`, None) or (None, a one-line warning saying why not)."""
    model_path = Path(model_path)
    path = model_path.with_name(DETECTOR_FILENAME)
    refit = f"run `dogcat detector fit {model_path} DATA_DIR`"
    if not path.is_file():
        return None, f"no {path} beside the model, so no 'neither' verdicts ({refit})"
    try:
        detector = Detector.load(path)
    except ArtifactError as error:
        return None, f"{error}; no 'neither' verdicts ({refit})"
    if detector.keras_sha256 != file_sha256(model_path):
        return None, f"{path} was fitted for a different .keras file, so no 'neither' verdicts ({refit})"
    return detector, None


@dataclass(frozen=True)
class VerdictRules:
    """What turns probabilities into a verdict; the defaults are dogcat.config.PredictConfig's."""

    unsure_below: float = PredictConfig.threshold
    min_side: int = PredictConfig.min_side


def decide(probabilities: dict[str, float], size: tuple[int, int] | None, is_neither: bool | None,
           rules: VerdictRules = VerdictRules()) -> str:
    """The one verdict function: too_small, neither, unsure, or the top class, in that order.

    Too small comes first: it is the more useful explanation for a thumbnail, which the
    detector may also find unusual. `is_neither` is None without a detector.
    """
    if size is not None and min(size) < rules.min_side:
        return TOO_SMALL
    if is_neither:
        return NEITHER
    label = max(probabilities, key=probabilities.__getitem__)
    return label if probabilities[label] >= rules.unsure_below else UNSURE


def describe(verdict: str, probabilities: dict[str, float], size: tuple[int, int] | None,
             rules: VerdictRules = VerdictRules()) -> str:
    """The verdict as a short sentence for people (apps, the CLI table)."""
    if verdict == NEITHER:
        return "Neither a cat nor a dog"
    if verdict == TOO_SMALL:
        width, height = size
        return f"Too small to judge ({width}x{height} px; needs {rules.min_side} px on the shorter side)"
    if verdict == UNSURE:
        return f"Not sure (maybe {max(probabilities, key=probabilities.__getitem__)})"
    return f"{verdict[0].upper()}{verdict[1:]}"


def _normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
