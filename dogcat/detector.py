"""The "neither" detector: its maths and its file format (NumPy only; dogcat.verdict decides).

The classifier has two outputs and calls a cougar a cat. The detector reads two kinds of evidence
from the one forward pass the classifier already makes (`FEATURE_BLOCKS`, "features" in both runtimes):

- **Distance from the user's own cats and dogs**: the Mahalanobis distance of the pooled features
  to the nearer class mean (Lee et al. 2018), summed over two blocks. Its thresholds are set on
  out-of-fold distances of every training and validation photo (5 folds, so 3,600 photos rather
  than 400 decide them): over `threshold` is far (at most `turn_away` of the user's pets), over
  `unsure_threshold` is unusual (at most `unsure_share`).
- **What ImageNet sees**, by kind (dogcat.imagenet_groups): MobileNetV2's own ImageNet-1k classifier
  layer read on the same pooled features. A far photo is kept when the sharpened probability of
  dog breeds, domestic cats and lynx reaches `PET_AT_LEAST`; any photo is "neither" when more of
  ImageNet's probability sits on kinds no pet is read as (`NEVER_PET`: big cats, hoofed animals,
  birds...) than on any of the user's own pets; and "unsure" when a kind pets are sometimes read
  as (`LOOKALIKES`: wolves and foxes, small mammals, lynx) outweighs the pet classes by more than
  for any of them.

docs/design.md ("The neither detector, in detail") says why, docs/benchmarks.md what it costs and
reaches. Both files are NumPy arrays and a JSON header, read with allow_pickle=False, sizes bounded
before inflating, every number checked finite, tied to their `.keras` and head by sha256.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dogcat import imagenet_groups
from dogcat.artifacts import IMAGENET_HEAD_FILENAME, ArtifactError, file_sha256, save_atomic
from dogcat.config import ConfigError, PredictConfig
from dogcat.model_folder import ModelFolder
from dogcat.verdict import CAT, DOG, LooksLike

DETECTOR_FORMAT = 4  # 4: cross-fitted thresholds, the unsure band, ImageNet vetoes by kind
METHOD = "mahalanobis+imagenet-groups"
MAX_DETECTOR_BYTES = 64 * 2**20  # uncompressed, from the zip directory: a real one is ~5 MB
MAX_HEAD_BYTES = 32 * 2**20  # uncompressed: a real head is ~7 MB
# The detector's input, one row per photo: these tensors of the classifier, each globally
# average-pooled, side by side. Both runtimes return exactly this as "features": Keras
# (dogcat.model.with_features) and the ONNX twin (dogcat.onnx_graph).
FEATURE_BLOCKS = (
    ("pool", 1280),  # the head's GlobalAveragePooling2D: the fine-tuned base's output
    ("block_15_add", 160),  # MobileNetV2's frozen ImageNet trunk, the input of the fine-tuned block_16
)
IMAGENET_FEATURES = 1280  # the head reads the first block, as the ImageNet network's classifier did

# ImageNet-1k indices, counted with "background" as 0 (the head's 1,001 outputs).
DOG_BREEDS = range(152, 270)  # Chihuahua ... Mexican hairless
DOMESTIC_CATS = range(282, 287)  # tabby cat ... Egyptian cat
BIG_CATS = range(287, 295)  # cougar ... cheetah: look-alikes, not pets
PETS = np.r_[DOG_BREEDS, DOMESTIC_CATS]


def _head_rows(*groups: str, wnids: tuple[str, ...] = ()) -> np.ndarray:
    """The head's output rows of these ImageNet groups and single classes (by WordNet id)."""
    table = imagenet_groups.classes()
    return np.array(sorted(c.index + imagenet_groups.HEAD_OFFSET for c in table
                           if c.group in groups or c.wnid in wnids), dtype=np.intp)


LYNX, COUGAR = "n02127052", "n02125311"  # the two "wild_cat" classes: a pet is read as a lynx now and then, never as a cougar
# The evidence by kind, chosen from which kinds real pets are read as (docs/design.md): on 3,600
# Kaggle pets no never-a-pet kind took more than half the probability, while most big cats,
# farm animals and deer do; wolves, foxes, ferrets, rabbits and monkeys are sometimes what a real
# pet looks like to ImageNet (a shiba as a dingo, a Sphynx as a Mexican hairless), so they only
# make a photo "unsure", and only past what any of the user's own pets reached.
RESCUE = _head_rows("dog", "house_cat", wnids=(LYNX,))
NEVER_PET = _head_rows("big_cat", "ungulate", "elephant", "bear", "marsupial", "xenarthran", "marine_mammal",
                       "bird", "fish", "reptile_amphibian", "invertebrate", wnids=(COUGAR,))
LOOKALIKES = {
    "wild canine": _head_rows("wild_canine", "other_carnivore"),
    "small mammal": _head_rows("mustelid", "rodent_rabbit", "primate"),
    "lynx": _head_rows(wnids=(LYNX,)),
}
CROSS_FIT_FOLDS = 5
# The fusion, chosen on photos unlike the training ones (pets-dev, ood-dev; docs/design.md):
# sharpening the logits (T = 0.5) before summing the pet classes keeps a pet whose probability is
# spread over many breeds, and 0.3 is where real pets stop being turned away while a lion, a fox
# or a cow (pet mass 0.02-0.2) still is.
PET_TEMPERATURE = 0.5
PET_AT_LEAST = 0.3
# On the validation photos, the model's top ImageNet class is among the frozen network's top 5
# for 98% (the shipped model, last block fine-tuned) and 84% (3 blocks, where the head still
# halved the pets turned away); under this share the head no longer reads ImageNet classes.
MIN_IMAGENET_AGREEMENT = 0.6
MIN_AGREEMENT_PHOTOS = 50  # a share of fewer validation photos says too little (an untrained model can pass on 4)


# How "neither" and "looks like" are decided, said once: the apps' About text, the Space card, the
# README and the model card all use these words (a test holds the two documents to them).
DESCRIPTION = (
    "**Neither a cat nor a dog** is said when MobileNetV2's own ImageNet classifier, read on the photo's features, "
    "puts more of its probability on kinds of animal no pet is read as (big cats, cougars, hoofed animals, bears, "
    "birds...) than it did for any training cat or dog, or when the photo is far from every training photo (about "
    "0.5% of the training cats and dogs are that far, out of fold) and that classifier puts under 30% of its "
    "probability on its 118 dog breeds, 5 domestic cats and the lynx. So a cat or dog unlike the training photos "
    "is still a cat or a dog, while a cougar, a cow or a car is not. **Not sure** is said when the top probability "
    "is low, when the photo is less far but still unusual (about 2% of the training cats and dogs), or when it looks "
    "more like a wolf or fox, a small mammal (ferret, rabbit, monkey) or a lynx than any training cat or dog did. "
    "**Looks like** is that ImageNet classifier's most probable class, by its everyday name: a hint, not a claim "
    "about a breed. **Too small** is said when the photo's shorter side is under the size where accuracy drops "
    "below 95%."
)


def _check_npz(path: Path, limit: int, what: str) -> None:
    """Refuse a missing file, a non-zip, or one whose members would inflate past `limit` bytes."""
    if not path.is_file():
        raise ArtifactError(f"{what} file not found. Received: path={str(path)!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        raise ArtifactError(f"Not a dogcat {what.lower()} file (not an .npz archive). Received: path={str(path)!r}") from None
    if total > limit:
        raise ArtifactError(f"{what} file would inflate to {total / 2**20:.0f} MiB, over the {limit // 2**20} MiB "
                            f"limit. Received: path={str(path)!r}")


@dataclass
class ImageNetHead:
    """MobileNetV2's ImageNet-1k classifier layer, read on the classifier's pooled features."""

    kernel: np.ndarray  # (1001, 1280) float32, dequantized, one row per class; it reads the first 1280 features
    bias: np.ndarray  # (1001,)
    names: list[str]  # readable class names, index 0 "background"
    sha256: str  # of the file it came from: the detector records which head it was fitted with

    def logits(self, features: np.ndarray) -> np.ndarray:
        return _times_rows_of(np.asarray(features, np.float32)[:, : self.kernel.shape[1]], self.kernel) + self.bias

    def pet_probability(self, logits: np.ndarray, temperature: float = PET_TEMPERATURE) -> np.ndarray:
        """The share of the (sharpened) ImageNet probability on dog breeds, domestic cats and the lynx."""
        return _softmax(logits / temperature)[:, RESCUE].sum(axis=1)

    def looks_like(self, logits: np.ndarray) -> list[LooksLike]:
        """Each row's most probable ImageNet class (never "background") by its everyday name, its
        probability, "cat" or "dog" where it is a domestic cat or a dog breed, its id and group."""
        probabilities = _softmax(logits)
        top = probabilities[:, 1:].argmax(axis=1) + 1
        table = imagenet_groups.classes()
        seen = []
        for row, i in enumerate(top):
            kind = table[i - imagenet_groups.HEAD_OFFSET]
            animal = DOG if kind.group == "dog" else CAT if kind.group == "house_cat" else None
            seen.append(LooksLike(kind.readable_name, float(probabilities[row, i]), animal, kind.wnid, kind.group))
        return seen

    @classmethod
    def load(cls, path: str | Path) -> ImageNetHead:
        """Read tools/derive_imagenet_head.py's file; any malformed file is an ArtifactError, never executed."""
        path = Path(path)
        _check_npz(path, MAX_HEAD_BYTES, "ImageNet head")
        try:
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"][()]))
                kernel = np.asarray(archive["kernel"])
                bias = np.asarray(archive["bias"])
                names = [str(n) for n in archive["names"]]
            scale, zero, bias_scale = (float(header[k]) for k in ("kernel_scale", "kernel_zero_point", "bias_scale"))
            valid = (header.get("format") == 1 and kernel.dtype == np.uint8 and kernel.shape == (1001, IMAGENET_FEATURES)
                     and bias.dtype == np.int32 and bias.shape == (1001,) and len(names) == 1001
                     and all(math.isfinite(v) and v > 0 for v in (scale, bias_scale)) and math.isfinite(zero)
                     and names[DOG_BREEDS[0]] == "Chihuahua" and names[DOMESTIC_CATS[0]] == "tabby cat")
        except Exception as error:  # any damaged or foreign file: refuse it, in one line
            raise ArtifactError(f"Not a dogcat ImageNet head file ({type(error).__name__}). Received: path={str(path)!r}") from None
        if not valid:
            raise ArtifactError(f"Not a dogcat ImageNet head file (unexpected contents). Received: path={str(path)!r}")
        weights = (kernel.astype(np.float32) - zero) * scale
        return cls(weights, (bias * bias_scale).astype(np.float32), names, file_sha256(path))


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
        distances = np.einsum("nd,nd->n", _times_rows_of(x, precision), x)[:, None] - 2 * x @ means_precision.T + means_term
        return distances.min(axis=1)

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return (self.distances(features) - self.val_mean) / self.val_std


@dataclass
class Judgement:
    """What the detector says of a batch: who is "neither", and what each photo looks like (None without the head)."""

    neither: np.ndarray  # bool (N,)
    looks_like: list[LooksLike] | list[None]
    unsure: np.ndarray | None = None  # bool (N,): unusual, or like a look-alike; never where `neither`


@dataclass
class Detector:
    """Distance from the user's pets, and what the ImageNet head sees, by kind (module docstring)."""

    blocks: list[FeatureBlock]
    threshold: float  # distance scores above it are far from every training photo ("neither" unless ImageNet sees a pet)
    keras_sha256: str  # the .keras file whose features these are
    info: dict  # how it was fitted (counts, shares turned away, ImageNet thresholds): for model cards and `judge`
    imagenet_sha256: str | None = None  # the head it was fitted with; None: distance alone
    head: ImageNetHead | None = field(default=None, repr=False, compare=False)  # attached by `detector_for`

    @property
    def width(self) -> int:
        return sum(block.width for block in self.blocks)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The sum of each block's standardised distance; higher is less like a training photo."""
        features = self._checked(features)
        total, start = np.zeros(len(features), np.float32), 0
        for block in self.blocks:
            total += block.standardised(features[:, start : start + block.width])
            start += block.width
        return total

    def judge(self, features: np.ndarray) -> Judgement:
        """Who is "neither", who "unsure", and what each photo looks like (the module docstring's rule)."""
        features = self._checked(features)
        scores = self.scores(features)
        far, unusual = scores > self.threshold, scores > self.info.get("unsure_threshold", math.inf)
        if self.head is None:
            return Judgement(far, [None] * len(features), unusual & ~far)
        logits = self.head.logits(features)
        pet_seen = self.head.pet_probability(logits, self.info["pet_temperature"]) >= self.info["pet_at_least"]
        probabilities = _softmax(logits)
        neither = (far & ~pet_seen) | (probabilities[:, NEVER_PET].sum(axis=1) > self.info["never_pet_at"])
        unsure = unusual & ~pet_seen
        for kind, rows in LOOKALIKES.items():
            unsure |= _margin_over_pets(probabilities, rows) > self.info["lookalike_at"][kind]
        return Judgement(neither, self.head.looks_like(logits), unsure & ~neither)

    def _checked(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.width:
            raise ArtifactError(f"Detector expects features of width {self.width}. Received: shape={features.shape}")
        return features

    def save(self, path: str | Path) -> None:
        header = {
            "format": DETECTOR_FORMAT, "method": METHOD, "threshold": self.threshold,
            "keras_sha256": self.keras_sha256, "imagenet_sha256": self.imagenet_sha256, "info": self.info,
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
    def load(cls, path: str | Path, expected: tuple[tuple[str, int], ...] = FEATURE_BLOCKS) -> Detector:
        """Read a detector file; any malformed file is an ArtifactError, never executed.

        Checked before use: sizes from the zip directory, block names and widths against `expected`
        (the features the runtimes give), and every number finite (a NaN scale would switch
        "neither" off without a word).
        """
        path = Path(path)
        _check_npz(path, MAX_DETECTOR_BYTES, "Detector")
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
            imagenet = header.get("imagenet_sha256")
            detector = cls(blocks, float(header["threshold"]), str(header["keras_sha256"]), dict(header.get("info", {})),
                           None if imagenet is None else str(imagenet))
            valid = valid and _well_formed(detector, expected)
        except Exception as error:  # any damaged or foreign file: refuse it, in one line
            raise ArtifactError(f"Not a dogcat detector file ({type(error).__name__}). Received: path={str(path)!r}") from None
        if not valid:
            raise ArtifactError(f"Not a dogcat detector file (unexpected contents). Received: path={str(path)!r}")
        return detector


def _well_formed(detector: Detector, expected: tuple[tuple[str, int], ...]) -> bool:
    """The blocks the runtimes' features have, square precisions, and every number finite."""
    blocks = detector.blocks
    return [(b.name, b.width) for b in blocks] == [tuple(b) for b in expected] and math.isfinite(detector.threshold) and all(
        b.means.ndim == 2 and b.precision.shape == (b.width, b.width) and np.isfinite(b.precision).all()
        and np.isfinite(b.means).all() and math.isfinite(b.val_mean) and math.isfinite(b.val_std) and b.val_std > 0
        for b in blocks
    ) and _finite_thresholds(detector)


def _finite_thresholds(detector: Detector) -> bool:
    """Every threshold `judge` reads is a finite number (a NaN would switch a rule off without a word)."""
    info = detector.info
    numbers = [info.get("unsure_threshold")]
    if detector.imagenet_sha256 is not None:
        lookalike = info.get("lookalike_at")
        if not isinstance(lookalike, dict) or set(lookalike) != set(LOOKALIKES):
            return False
        numbers += [info.get(k) for k in ("pet_temperature", "pet_at_least", "never_pet_at")] + list(lookalike.values())
    return all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)


def _margin_over_pets(probabilities: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """log(probability on `rows`) - log(probability on dog breeds and domestic cats), per photo."""
    tiny = np.float32(1e-9)
    return np.log(probabilities[:, rows].sum(axis=1) + tiny) - np.log(probabilities[:, PETS].sum(axis=1) + tiny)


def fit_detector(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
    keras_sha256: str, blocks: tuple[tuple[str, int], ...], turn_away: float = PredictConfig.turn_away,
    unsure_share: float = PredictConfig.unsure_share, head: ImageNetHead | None = None,
    imagenet_agreement: float | None = None,
) -> Detector:
    """A detector on the user's own cats and dogs (training and validation photos together).

    `blocks` names the consecutive parts of a feature row and their widths. Every feature must
    come from a real cat or dog. The distance thresholds come from out-of-fold distances
    (CROSS_FIT_FOLDS folds, stratified by class): at most `turn_away` of them are over
    `threshold`, at most `unsure_share` over `unsure_threshold` (fewer on a small set: 1% of 50
    photos is none). The class means and covariances are then fitted on every photo.
    With `head`, and `imagenet_agreement` (the share of validation photos whose top ImageNet class
    from the model's features is among the frozen ImageNet network's top 5) at least
    MIN_IMAGENET_AGREEMENT, the ImageNet thresholds are the most any of these pets reached.
    """
    for name, share in (("turn_away", turn_away), ("unsure_share", unsure_share)):
        if not 0 < share < 0.5:
            raise ConfigError(f"{name} must be in (0, 0.5). Received: {name}={share}")
    if turn_away > unsure_share:
        raise ConfigError(f"turn_away must be at most unsure_share ({unsure_share}). Received: turn_away={turn_away}")
    features = np.concatenate([np.asarray(train_features, np.float64), np.asarray(val_features, np.float64)])
    labels = np.concatenate([np.asarray(train_labels), np.asarray(val_labels)])
    classes, counts = np.unique(labels, return_counts=True)
    width = sum(w for _, w in blocks)
    if len(classes) < 2 or counts.min() < 2 or len(val_features) == 0 or features.shape[1] != width:
        raise ArtifactError(
            f"Need at least 2 photos of each of 2 classes, validation photos, and features of width {width}. "
            f"Received: classes={dict(zip(classes.tolist(), counts.tolist(), strict=True))}, "
            f"{len(val_features)} validation photos, width={features.shape[1]}"
        )
    folds = _stratified_folds(labels, min(CROSS_FIT_FOLDS, int(counts.min())))
    fitted, out_of_fold, start = [], np.zeros(len(features), np.float32), 0
    for name, block_width in blocks:
        part = features[:, start : start + block_width]
        distances = np.zeros(len(features), np.float32)
        for fold in np.unique(folds):
            held_out = folds == fold
            distances[held_out] = _fit_block(name, part[~held_out], labels[~held_out]).distances(part[held_out].astype(np.float32))
        block = _fit_block(name, part, labels)
        block.val_mean, block.val_std = float(distances.mean()), float(distances.std()) or 1.0
        out_of_fold += (distances - block.val_mean) / block.val_std
        fitted.append(block)
        start += block_width
    reads_true = (head is not None and imagenet_agreement is not None and imagenet_agreement >= MIN_IMAGENET_AGREEMENT
                  and len(val_features) >= MIN_AGREEMENT_PHOTOS)
    detector = Detector(fitted, _over_at_most(out_of_fold, turn_away), keras_sha256, {},
                        head.sha256 if reads_true else None, head if reads_true else None)
    detector.info = {
        "train_photos": len(train_features), "val_photos": len(val_features), "cross_fit_folds": int(folds.max()) + 1,
        "turn_away_target": turn_away, "unsure_share_target": unsure_share,
        "unsure_threshold": _over_at_most(out_of_fold, unsure_share),
        "out_of_fold_far": float(np.mean(out_of_fold > detector.threshold)),
        "imagenet_agreement": imagenet_agreement, "imagenet_used": reads_true,
    }
    if reads_true:
        probabilities = _softmax(head.logits(features.astype(np.float32)))
        detector.info |= {
            "pet_temperature": PET_TEMPERATURE, "pet_at_least": PET_AT_LEAST,
            "never_pet_at": float(probabilities[:, NEVER_PET].sum(axis=1).max()),
            "lookalike_at": {kind: float(_margin_over_pets(probabilities, rows).max()) for kind, rows in LOOKALIKES.items()},
        }
    judged = detector.judge(features[len(train_features):])  # in-sample: the card's "val turned away" is a floor
    detector.info["val_turned_away"] = float(np.mean(judged.neither))
    return detector


def _stratified_folds(labels: np.ndarray, count: int) -> np.ndarray:
    """Fold of each photo, each class dealt round the folds in its order (deterministic, balanced)."""
    folds = np.zeros(len(labels), np.intp)
    for value in np.unique(labels):
        where = np.flatnonzero(labels == value)
        folds[where] = np.arange(len(where)) % count
    return folds


def _fit_block(name: str, features: np.ndarray, labels: np.ndarray) -> FeatureBlock:
    """Class means and the shared, shrunk precision of L2-normalised features (scale set by the caller)."""
    x = _normalise(features)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = np.concatenate([x[labels == c] - means[i] for i, c in enumerate(classes)])
    return FeatureBlock(name, means.astype(np.float32), np.linalg.inv(_ledoit_wolf(centred)).astype(np.float32), 0.0, 1.0)


def _over_at_most(scores: np.ndarray, share: float) -> float:
    """The threshold that puts at most `share` of `scores` above it: the (k+1)-th highest score,
    k = floor(share * count)."""
    allowed = math.floor(share * len(scores) + 1e-9)
    return float(np.sort(scores)[::-1][min(allowed, len(scores) - 1)])


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


def detector_for(model_path: str | Path, expected: tuple[tuple[str, int], ...] = FEATURE_BLOCKS,
                 ) -> tuple[Detector | None, str | None]:
    """(the detector beside `model_path`, with its ImageNet head attached, and None) or, where
    something is missing, what can still be used and a one-line warning saying why not all."""
    model_path, folder = Path(model_path), ModelFolder(Path(model_path))
    path = folder.detector
    refit = f"run `dogcat detector fit {model_path} DATA_DIR`"
    if not path.is_file():
        return None, f"no {path} beside the model, so no 'neither' verdicts ({refit})"
    try:
        detector = Detector.load(path, expected)
    except ArtifactError as error:
        return None, f"{error}; no 'neither' verdicts ({refit})"
    if detector.keras_sha256 != file_sha256(model_path):
        return None, f"{path} was fitted for a different .keras file, so no 'neither' verdicts ({refit})"
    if detector.imagenet_sha256 is None:
        agreement, photos = detector.info.get("imagenet_agreement"), detector.info.get("val_photos", 0)
        if agreement is None:
            why = "was fitted without the ImageNet head"
        elif photos < MIN_AGREEMENT_PHOTOS:
            why = (f"was fitted on {photos} validation photos, too few to tell whether the model's features still "
                   f"read ImageNet classes (needs {MIN_AGREEMENT_PHOTOS})")
        else:
            why = (f"found the model's features read ImageNet classes on only {agreement:.0%} of validation photos "
                   f"(under {MIN_IMAGENET_AGREEMENT:.0%}: its features have moved too far from ImageNet's)")
        return detector, f"{path} {why}, so 'neither' is judged on feature distance alone and real pets unlike the training photos may be turned away"
    head_path = folder.imagenet_head
    try:
        head = ImageNetHead.load(head_path if head_path is not None else folder.beside(IMAGENET_HEAD_FILENAME))
    except ArtifactError as error:
        return detector, f"{error}; 'neither' is judged on feature distance alone, with no 'looks like' ({refit})"
    if head.sha256 != detector.imagenet_sha256:
        return detector, (f"{head_path} is not the ImageNet head the detector was fitted with, so 'neither' is judged "
                          f"on feature distance alone, with no 'looks like' ({refit})")
    detector.head = head
    return detector, None


def _times_rows_of(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """rows @ matrix.T (for the symmetric precision, rows @ matrix). For a photo or two, a
    single-threaded einsum along the matrix's contiguous rows: right after an ONNX Runtime call,
    BLAS's threads wake onto cores ORT's threads still spin on, and one 1280-wide product took
    ~4 ms instead of ~0.15 ms (2-core machine, benchmarks/verdicts.py); a batch keeps BLAS."""
    if len(rows) <= 2:
        return np.einsum("nd,kd->nk", rows, matrix, optimize=False)
    return rows @ matrix.T


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
