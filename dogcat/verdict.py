"""Verdicts: cat, dog, neither, unsure or too small, decided in one place for every path.

The seed's question is whether a photo *contains* a cat or a dog, but the classifier has only
two outputs and calls a car a cat. The verdict adds what the classifier cannot say:

- **neither**: the photo's pooled MobileNetV2 features (the classifier's "pool" layer, which the
  ONNX twin also returns) are far from every training photo's. The `Detector` keeps the training
  photos' L2-normalised features and scores a photo by its cosine distance to the k-th nearest
  of them (deep k-nearest-neighbour novelty detection, Sun et al. 2022). Its threshold is set on
  the validation split so that a chosen share of real cats and dogs (default 1%) is turned away.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogcat.artifacts import DETECTOR_FILENAME, ArtifactError, file_sha256, save_atomic
from dogcat.config import ConfigError, PredictConfig

CAT, DOG, NEITHER, UNSURE, TOO_SMALL = "cat", "dog", "neither", "unsure", "too_small"
VERDICTS = (CAT, DOG, NEITHER, UNSURE, TOO_SMALL)
DEFAULT_NEIGHBOURS = 10
DETECTOR_FORMAT = 1
MAX_DETECTOR_BYTES = 256 * 2**20  # a sane bound before np.load reads anything


@dataclass(frozen=True)
class Detector:
    """Cosine k-nearest-neighbour novelty detector on the classifier's pooled features."""

    reference: np.ndarray  # (M, D) float16, L2-normalised training features
    neighbours: int  # k: the score is the distance to the k-th nearest reference
    threshold: float  # scores above it are "neither"
    keras_sha256: str  # the .keras file whose features these are
    info: dict  # how it was fitted (counts, share turned away on val): for model cards

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Cosine distance from each feature row to its k-th nearest reference row."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.reference.shape[1]:
            raise ArtifactError(
                f"Detector expects features of width {self.reference.shape[1]}. Received: shape={features.shape}"
            )
        similarity = _normalise(features) @ self.reference.astype(np.float32).T
        k = min(self.neighbours, self.reference.shape[0])
        kth_largest = np.partition(similarity, -k, axis=1)[:, -k]
        return 1.0 - kth_largest

    def flags(self, features: np.ndarray) -> np.ndarray:
        """True where a photo is "neither": its score is above the threshold."""
        return self.scores(features) > self.threshold

    def save(self, path: str | Path) -> None:
        header = {
            "format": DETECTOR_FORMAT, "method": "cosine-knn", "neighbours": self.neighbours,
            "threshold": self.threshold, "keras_sha256": self.keras_sha256, "info": self.info,
        }

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez_compressed(handle, reference=self.reference, header=np.array(json.dumps(header)))

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
                reference = np.asarray(archive["reference"])
            detector = cls(
                reference=reference, neighbours=int(header["neighbours"]), threshold=float(header["threshold"]),
                keras_sha256=str(header["keras_sha256"]), info=dict(header.get("info", {})),
            )
            valid = (
                header.get("format") == DETECTOR_FORMAT and header.get("method") == "cosine-knn"
                and reference.ndim == 2 and reference.shape[0] >= 1 and detector.neighbours >= 1
                and math.isfinite(detector.threshold) and np.isfinite(reference).all()
            )
        except Exception as error:  # any damaged or foreign file: refuse it, in one line
            raise ArtifactError(f"Not a dogcat detector file ({type(error).__name__}). Received: path={str(path)!r}") from None
        if not valid:
            raise ArtifactError(f"Not a dogcat detector file (unexpected contents). Received: path={str(path)!r}")
        return detector


def fit_detector(
    train_features: np.ndarray, val_features: np.ndarray, keras_sha256: str,
    turn_away: float = PredictConfig.turn_away, neighbours: int = DEFAULT_NEIGHBOURS,
) -> Detector:
    """A detector on the training photos' features, its threshold set on the validation photos.

    Every feature must come from a real cat or dog. The threshold is the validation scores'
    (1 - turn_away) quantile, so about `turn_away` of real cats and dogs are called "neither".
    """
    if not 0 < turn_away < 0.5:
        raise ConfigError(f"turn_away must be in (0, 0.5). Received: turn_away={turn_away}")
    if len(train_features) < neighbours or len(val_features) == 0:
        raise ValueError(
            f"Need at least {neighbours} training and 1 validation photo. "
            f"Received: {len(train_features)} training, {len(val_features)} validation"
        )
    reference = _normalise(np.asarray(train_features, dtype=np.float32)).astype(np.float16)
    detector = Detector(reference, neighbours, 0.0, keras_sha256, {})
    val_scores = detector.scores(val_features)
    threshold = float(np.quantile(val_scores, 1.0 - turn_away, method="higher"))
    info = {
        "train_photos": len(train_features), "val_photos": len(val_features), "turn_away_target": turn_away,
        "val_turned_away": float(np.mean(val_scores > threshold)),
    }
    return Detector(reference, neighbours, threshold, keras_sha256, info)


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
    features = {}
    for split in ("train", "val"):
        paths = read_split(data_dir, split).paths
        read = [p for p in classifier.predict(paths, names=[str(p) for p in paths]) if p.error is None]
        if not read:
            raise ArtifactError(f"None of the {split} photos could be read. Received: data_dir={str(data_dir)!r}")
        features[split] = np.stack([p.features for p in read])
    detector = fit_detector(features["train"], features["val"], file_sha256(model_path), turn_away)
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
