"""The "neither" rule's trade-off: pets turned away against other animals flagged, shipped rule and rejected ones.

    python benchmarks/neither_rules.py --dev ../shared/data [--source KAGGLE_TRAIN_DIR] [--data data/dogcat-4k]
                                       [--model M]

Every photo goes once through the served path (`Classifier.predict`, float32 ONNX by default),
keeping its features; each rule then judges those features (`Detector.judge` with its thresholds
changed, `verdict.decide`), so the rules differ only in the rule. Rules whose thresholds come from
the user's pets are fitted here on the training + validation photos, as `dogcat detector fit` does.

Sets: the test split and the Kaggle photos outside the dataset (`--source`, default
$DOGCAT_SHARED_DATA); and, from `--dev`: pets-dev (cat/, dog/: real pets from other collections),
ood-dev (no cat or dog; "everyday" and animal folders) and animals-dev (one row per folder).
Pets: the share called "neither", and "neither" or "unsure". Others: the share flagged, i.e. not
called "cat" or "dog". Each with its count and 95% Wilson interval. Issue targets: pets neither
<= 1% per class and set; pets neither+unsure <= today + 1 point; animals-dev >= 85% overall, every
folder >= 70%, big cats >= 90%; ood-dev everyday >= 99.5%, animals >= 95%.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from benchmarks.accuracy import outside_photos, wilson_interval  # noqa: E402

EVERYDAY = ("people", "scenes", "food", "vehicles", "objects", "plants_flowers")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class PhotoSet:
    name: str
    truth: np.ndarray  # "cat" / "dog" or a folder name
    probabilities: list[dict[str, float]]
    sizes: list[tuple[int, int]]
    features: np.ndarray
    pets: bool  # rows are real cats and dogs


def read_set(classifier, name: str, paths: list[Path], truth: list[str], pets: bool) -> PhotoSet:
    predictions = classifier.predict(paths, names=[str(p) for p in paths])
    read = [i for i, p in enumerate(predictions) if p.error is None]
    print(f"{name}: {len(read)} of {len(paths)} photos read", flush=True)
    return PhotoSet(name, np.array([truth[i] for i in read]), [predictions[i].probabilities for i in read],
                    [predictions[i].size for i in read], np.stack([predictions[i].features for i in read]), pets)


def folders(root: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in root.glob("*/*") if p.suffix.lower() in SUFFIXES)
    return paths, [p.parent.name for p in paths]


def verdicts(detector, photos: PhotoSet, rules) -> np.ndarray:
    from dogcat.verdict import decide

    judged = detector.judge(photos.features)
    return np.array([decide(p, s, bool(n), rules, bool(u)) for p, s, n, u in
                     zip(photos.probabilities, photos.sizes, judged.neither, judged.unsure, strict=True)])


def variants(shipped, reference: np.ndarray) -> dict[str, object]:
    """The shipped detector and the rules it was chosen over, all on the same features.

    `reference` is the training + validation features: thresholds "the most any pet reached" or a
    quantile of them are recomputed there, as fitting does.
    """
    from dogcat.detector import LOOKALIKES, _margin_over_pets, _softmax

    def changed(**info):
        detector = copy.copy(shipped)
        detector.info = {**shipped.info, **info}
        return detector

    probabilities = _softmax(shipped.head.logits(reference))
    at_999 = {kind: float(np.quantile(_margin_over_pets(probabilities, rows), 0.999)) for kind, rows in LOOKALIKES.items()}
    never = {"never_pet_at": math.inf}
    no_lookalikes = {"lookalike_at": dict.fromkeys(LOOKALIKES, math.inf)}
    no_band = {"unsure_threshold": math.inf}
    band_as_neither = copy.copy(shipped)
    band_as_neither.threshold = shipped.info["unsure_threshold"]
    return {
        "shipped: all four": shipped,
        "distance and pet rescue only (last round's shape)": changed(**never, **no_lookalikes, **no_band),
        "+ never-a-pet veto": changed(**no_lookalikes, **no_band),
        "+ veto, look-alikes unsure (no distance band)": changed(**no_band),
        "look-alikes at 99.9% of pets, not the most": changed(lookalike_at=at_999),
        "the distance band as 'neither' (2% of pets out of fold)": _with(band_as_neither, no_band),
    }


def _with(detector, info):
    detector.info = {**detector.info, **info}
    return detector


def latency(photo: Path, runs: int) -> str:
    """p50 of one photo, file to verdict on float32 ONNX, interleaved and rotated: probabilities only,
    last round's judge (distance, then the pet rescue), and the shipped one."""
    from dogcat.detector import Detector, Judgement
    from dogcat.inference import Classifier

    class LastRound(Detector):
        def judge(self, features):  # the rule at 52319f6, for its cost: far and no pet seen
            far = self.scores(features) > self.threshold
            logits = self.head.logits(features)
            pet = self.head.pet_probability(logits, self.info["pet_temperature"])
            return Judgement(far & (pet < self.info["pet_at_least"]), self.head.looks_like(logits), np.zeros(len(far), bool))

    paths = {name: Classifier.from_path(runtime="onnx") for name in ("probabilities only", "last round's rule", "shipped rule")}
    paths["probabilities only"].detector = None
    paths["probabilities only"].runner.outputs = paths["probabilities only"].runner.outputs[:1]
    last = paths["last round's rule"]
    last.detector = LastRound(**{f: getattr(last.detector, f) for f in ("blocks", "threshold", "keras_sha256", "info",
                                                                           "imagenet_sha256", "head")})
    times = {name: [] for name in paths}
    order = list(paths.items())
    for run in range(runs + 5):  # 5 warm-up rounds, then interleaved and rotated
        for name, classifier in order[run % 3:] + order[: run % 3]:
            started = time.perf_counter()
            classifier.predict([photo])
            if run >= 5:
                times[name].append(time.perf_counter() - started)
    p50 = {name: float(np.median(t)) * 1000 for name, t in times.items()}
    base = p50["last round's rule"]
    ratio = p50["shipped rule"] / base
    return "\n".join([
        f"\n### Cost: one photo ({photo.name}), file to verdict, float32 ONNX, {runs} runs each, interleaved\n",
        "| path | p50 | vs last round's rule |", "|---|---|---|",
        *(f"| {name} | {value:.2f} ms | {value / base:.3f}x |" for name, value in p50.items()),
        f"\nShipped / last round: {ratio:.3f}x (target <= 1.25x: {'met' if ratio <= 1.25 else 'MISSED'}).",
    ])


def cell(count: int, total: int) -> str:
    low, high = wilson_interval(count, total)
    return f"{count}/{total} {count / total:.1%} [{low:.1%}, {high:.1%}]"


def table(sets: list[PhotoSet], rules_by_name: dict, rules) -> str:
    rows = []
    for name, detector in rules_by_name.items():
        rows.append(f"\n### {name}\n\n| set | group | neither | neither or unsure (pets) / flagged (others) |\n|---|---|---|---|")
        for photos in sets:
            given = verdicts(detector, photos, rules)
            if photos.pets:
                for kind in ("cat", "dog"):
                    mine = given[photos.truth == kind]
                    rows.append(f"| {photos.name} | {kind}s | {cell(int(np.sum(mine == 'neither')), len(mine))} | "
                                f"{cell(int(np.isin(mine, ['neither', 'unsure']).sum()), len(mine))} |")
                continue
            flagged = ~np.isin(given, ["cat", "dog"])
            groups = ({"everyday": np.isin(photos.truth, EVERYDAY), "animals": ~np.isin(photos.truth, EVERYDAY)}
                      if photos.name == "ood-dev" else {f: photos.truth == f for f in sorted(set(photos.truth))})
            groups["all"] = np.ones(len(given), bool)
            for group, where in groups.items():
                rows.append(f"| {photos.name} | {group} | {cell(int(np.sum(given[where] == 'neither')), int(where.sum()))} | "
                            f"{cell(int(flagged[where].sum()), int(where.sum()))} |")
    return "\n".join(rows)


def main() -> None:
    from dogcat.data import LABELS, read_split
    from dogcat.inference import Classifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k", help="prepared dataset")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle folder the dataset was drawn from (its unused photos)")
    parser.add_argument("--dev", type=Path, required=True, help="folder holding pets-dev/, ood-dev/, animals-dev/")
    parser.add_argument("--runs", type=int, default=200, help="latency runs per path (0: skip)")
    args = parser.parse_args()

    classifier = Classifier.from_path(args.model)
    shipped = classifier.detector
    if shipped is None or shipped.head is None:
        raise SystemExit(f"The model's detector has no ImageNet head: {classifier.verdict_warning}")
    splits = {split: read_split(args.data, split) for split in ("train", "val", "test")}
    names = dict(enumerate(LABELS))
    reference = read_set(classifier, "train+val", [p for s in ("train", "val") for p in splits[s].paths],
                         [names[int(x)] for s in ("train", "val") for x in splits[s].labels], True).features
    test = splits["test"]
    sets = [read_set(classifier, "test", test.paths, [names[int(x)] for x in test.labels], True)]
    if args.source:
        unused, labels = outside_photos(Path(args.source), args.data)
        sets.append(read_set(classifier, "Kaggle unused", unused, [names[int(x)] for x in labels], True))
    for name, pets in (("pets-dev", True), ("ood-dev", False), ("animals-dev", False)):
        paths, truth = folders(args.dev / name)
        sets.append(read_set(classifier, name, paths, truth, pets))
    body = table(sets, variants(shipped, reference), classifier.rules)
    if args.runs:
        body += "\n" + latency(REPO / "demos" / "examples" / "cat-chelsea.jpg", args.runs)
    print(body)
    write_section("Neither: the rule's trade-off", shlex.join(["python", *sys.argv]),
                  f"Runtime: {classifier.runtime}. Thresholds from {len(reference)} training + validation photos.\n{body}")


if __name__ == "__main__":
    main()
