"""Verdicts: how well "neither", "unsure" and "too small" work, and what they cost per photo.

    python benchmarks/verdicts.py --neither OOD_DIR --pets PETS_DIR [--source KAGGLE_TRAIN_DIR]
                                  [--model M] [--data data/dogcat-4k] [--runs 200]

Each photo set goes once through the served path (`Classifier.predict`, the ImageNet-gated
detector); its features are judged again with the detector's ImageNet head taken off
(`detector.head = None`: "distance alone", the rule before the ImageNet gate), so every table shows the
two rules side by side. The targets:

1. Real pets turned away: the share of the cats, and of the dogs, called "neither" (<= 1% each),
   with "unsure" beside it, on the test split and on `--pets` (cat/ and dog/ photos from other
   collections than the training ones); also on the Kaggle photos outside the dataset (`--source`,
   default $DOGCAT_SHARED_DATA). And the accuracy of the cat/dog verdicts given (over the photos
   whose verdict is cat or dog, verdict == label), beside the classifier's on all photos.
2. `--neither` photos (no cat or dog, one folder per category) called "neither": everyday (people,
   scenes, food, vehicles, objects, plants_flowers; >= 99.5%), animals (the rest; >= 95%), big
   cats (>= 90%), and each category.
3. Looks like: the share of `--neither` big cats whose `looks_like` is a big cat (>= 80%), and of
   `--pets` dogs whose `looks_like.animal` is "dog" (>= 90%); cats beside it, without a target.
4. Too small: the test photos scaled down (Lanczos, aspect kept) to a shorter side of 24 to 128
   px, classified through the served path; accuracy per size, plotted to
   benchmarks/verdict_sizes.png. `predict.min_side` should be the smallest size measured at
   >= 95%.
5. Cost: p50 latency of one 200x200 JPEG, file to verdict, on the ONNX path, interleaved in one
   run: probabilities only (the path before verdicts), distance alone, and with the ImageNet head
   (target: <= 1.05x distance alone).
"""

from __future__ import annotations

import argparse
import io
import operator
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from benchmarks.accuracy import outside_photos  # noqa: E402

EVERYDAY = ("people", "scenes", "food", "vehicles", "objects", "plants_flowers")
BIG_CAT_FOLDER = "bigcat"
SIZES = (24, 32, 48, 64, 80, 96, 128)
PLOT = Path(__file__).resolve().parent / "verdict_sizes.png"
OLD, NEW = "distance alone", "with ImageNet"
AT_MOST, AT_LEAST = (operator.le, "<="), (operator.ge, ">=")


@dataclass
class Judged:
    """One photo set, read photos only: what each is, its verdict under both rules, what it looks like."""

    truth: np.ndarray  # "cat" / "dog", or the category folder of a photo with neither
    verdicts: dict[str, np.ndarray]  # OLD and NEW: one verdict per photo
    looks_like: list  # LooksLike (or None) per photo, from the ImageNet head
    unreadable: int


@contextmanager
def distance_alone(classifier):
    """The same classifier with its detector's ImageNet head off: judge() then uses distance only."""
    head, classifier.detector.head = classifier.detector.head, None
    try:
        yield classifier
    finally:
        classifier.detector.head = head


def judge(classifier, paths, truth) -> Judged:
    from dogcat.verdict import decide

    predictions = classifier.predict(paths, names=[str(p) for p in paths])
    read = [i for i, p in enumerate(predictions) if p.error is None]
    predictions = [predictions[i] for i in read]
    with distance_alone(classifier):
        far = classifier.detector.judge(np.stack([p.features for p in predictions])).neither
    old = [decide(p.probabilities, p.size, bool(f), classifier.rules) for p, f in zip(predictions, far, strict=True)]
    return Judged(np.asarray(truth)[read], {OLD: np.array(old), NEW: np.array([p.verdict for p in predictions])},
                  [p.looks_like for p in predictions], len(paths) - len(read))


def photos_in(folder: Path) -> tuple[list[Path], list[str]]:
    """Every photo under `folder`, and the name of the sub-folder it is in."""
    from dogcat.preprocessing import IMAGE_SUFFIXES

    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return paths, [p.relative_to(folder).parts[0] for p in paths]


def share(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else float("nan")


def target(value: float, goal: tuple | None, level: float) -> str:
    if goal is None:
        return "-"
    compare, sign = goal
    return f"{sign} {level * 100:g}%: {'met' if compare(value, level) else 'MISSED'}"


def pets_section(sets: dict[str, tuple[Judged, bool]], names: dict[int, str]) -> list[str]:
    """Real cats and dogs: turned away and unsure per class, then accuracy of the verdicts given."""
    from dogcat.verdict import NEITHER, UNSURE

    lines = [f"| real pets | count | neither, {OLD} | neither, {NEW} | target | unsure, {OLD} | unsure, {NEW} |",
             "|---|---|---|---|---|---|---|"]
    for name, (judged, has_target) in sets.items():
        for animal in (names[0], names[1]):
            rows = judged.truth == animal
            neither = {rule: share(v[rows] == NEITHER) for rule, v in judged.verdicts.items()}
            unsure = {rule: share(v[rows] == UNSURE) for rule, v in judged.verdicts.items()}
            lines.append(f"| {name}: {animal}s | {rows.sum()} | {neither[OLD]:.2%} | {neither[NEW]:.2%} | "
                         f"{target(neither[NEW], AT_MOST if has_target else None, 0.01)} | "
                         f"{unsure[OLD]:.2%} | {unsure[NEW]:.2%} |")
    lines += ["", f"| cat/dog verdicts given | count | correct, {OLD} | correct, {NEW} |", "|---|---|---|---|"]
    for name, (judged, _) in sets.items():
        cells = []
        for verdicts in judged.verdicts.values():
            given = np.isin(verdicts, list(names.values()))
            cells.append(f"{share(verdicts[given] == judged.truth[given]):.2%} of {given.sum()}")
        lines.append(f"| {name} | {len(judged.truth)} | {' | '.join(cells)} |")
    lines.append("")
    for name, (judged, _) in sets.items():
        lines.append(f"- {name}, verdicts {NEW}: {counts(judged.verdicts[NEW])}"
                     + (f"; {judged.unreadable} unreadable, left out" if judged.unreadable else "") + ".")
    return lines


def counts(verdicts: np.ndarray) -> str:
    from dogcat.verdict import VERDICTS

    return ", ".join(f"{v} {int(np.sum(verdicts == v))}" for v in VERDICTS)


def neither_section(judged: Judged, folder: str) -> list[str]:
    """Photos with no cat or dog called "neither": by group, then by category."""
    from dogcat.verdict import NEITHER

    categories = sorted(set(judged.truth))
    groups = [
        ("everyday", [c for c in categories if c in EVERYDAY], 0.995),
        ("animals", [c for c in categories if c not in EVERYDAY], 0.95),
        ("big cats", [BIG_CAT_FOLDER], 0.90),
    ]
    lines = [f"| {folder}, called neither | count | {OLD} | {NEW} | target |", "|---|---|---|---|---|"]
    rows = [(name, members, AT_LEAST, level) for name, members, level in groups]
    rows += [(f"- {c}", [c], None, 0) for c in categories]
    for name, members, goal, level in rows:
        photos = np.isin(judged.truth, members)
        flagged = {rule: share(v[photos] == NEITHER) for rule, v in judged.verdicts.items()}
        lines.append(f"| {name} | {photos.sum()} | {flagged[OLD]:.2%} | {flagged[NEW]:.2%} | "
                     f"{target(flagged[NEW], goal, level)} |")
    lines += ["", f"Verdicts {NEW}: {counts(judged.verdicts[NEW])}"
              + (f"; {judged.unreadable} unreadable, left out" if judged.unreadable else "") + "."]
    return lines


def looks_like_section(neither: Judged, pets: Judged, folders: tuple[str, str], head) -> list[str]:
    """What the ImageNet head says the photos look like: big cats as big cats, pets as their animal."""
    from dogcat.detector import BIG_CATS

    big_cat_names = {head.names[i] for i in BIG_CATS}
    big_cats = [seen for seen, truth in zip(neither.looks_like, neither.truth, strict=True) if truth == BIG_CAT_FOLDER]
    rows = [(f"{folders[0]} big cats: a big cat ({', '.join(sorted(big_cat_names))})",
             [seen is not None and seen.name in big_cat_names for seen in big_cats], AT_LEAST, 0.80)]
    for animal, goal in (("dog", AT_LEAST), ("cat", None)):
        seen = [s for s, truth in zip(pets.looks_like, pets.truth, strict=True) if truth == animal]
        rows.append((f"{folders[1]} {animal}s: a {'dog breed' if animal == 'dog' else 'domestic cat'}",
                     [s is not None and s.animal == animal for s in seen], goal, 0.90))
    lines = [f"| looks like ({NEW}) | count | share | target |", "|---|---|---|---|"]
    for name, hits, goal, level in rows:
        lines.append(f"| {name} | {len(hits)} | {share(hits):.2%} | {target(share(hits), goal, level)} |")
    return lines


def size_section(classifier, data: Path) -> tuple[list[str], int | None]:
    from PIL import Image

    from dogcat.data import read_split
    from dogcat.verdict import VerdictRules

    split = read_split(data, "test")
    labels = np.asarray(split.labels)
    names = [classifier.class_names[i] for i in range(len(classifier.class_names))]
    no_size_rule = VerdictRules(unsure_below=classifier.rules.unsure_below, min_side=0)
    rows, accuracies = [], []
    originals = [Image.open(path) for path in split.paths]
    for side in (*SIZES, None):
        sources = []
        for image in originals:
            if side is None:
                sources.append(image)
                continue
            scale = side / min(image.size)
            small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            small.save(buffer, format="PNG")
            sources.append(buffer.getvalue())
        predictions = classifier.predict(sources, rules=no_size_rule)
        predicted = np.array([names.index(p.label) for p in predictions])
        accuracy = float(np.mean(predicted == labels))
        neither = float(np.mean([p.verdict == "neither" for p in predictions]))
        label = f"{side} px" if side else f"original ({min(originals[0].size)} px)"
        rows.append(f"| {label} | {accuracy:.4f} | {neither:.2%} |")
        if side:
            accuracies.append(accuracy)
    passing = [side for side, accuracy in zip(SIZES, accuracies, strict=True) if accuracy >= 0.95]
    cutoff = next((side for side in SIZES if all(s in passing for s in SIZES if s >= side)), None)
    _plot(accuracies)
    lines = ["| shorter side | accuracy | called neither |", "|---|---|---|", *rows, "",
             f"Smallest size from which every measured size scores >= 95%: {cutoff} px "
             f"(`predict.min_side` = {classifier.rules.min_side}). Curve: [verdict_sizes.png](verdict_sizes.png)."]
    return lines, cutoff


def _plot(accuracies: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(SIZES, accuracies, marker="o", label="test accuracy")
    axis.axhline(0.95, color="grey", linestyle="--", label="95%")
    axis.set_xscale("log", base=2)
    axis.set_xticks(SIZES, [str(s) for s in SIZES])
    axis.set_xlabel("shorter side of the photo (px)")
    axis.set_ylabel("accuracy")
    axis.set_title("Accuracy on test photos scaled down")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)
    plt.close(figure)


def cost_section(model: Path | None, photo: bytes, runs: int) -> list[str]:
    from dogcat.inference import Classifier

    paths = {name: Classifier.from_path(model, runtime="onnx") for name in ("probabilities only", OLD, NEW)}
    baseline = paths["probabilities only"]
    baseline.detector = None
    baseline.runner.outputs = baseline.runner.outputs[:1]  # probabilities only: the path before verdicts
    paths[OLD].detector.head = None
    times = {name: [] for name in paths}
    for _ in range(5):  # warm-up
        for classifier in paths.values():
            classifier.predict_one(photo)
    order = list(paths.items())
    for run in range(runs):  # interleaved, so a slow spell of this VM hits all three; rotated, so none always runs first
        for name, classifier in order[run % 3:] + order[: run % 3]:
            started = time.perf_counter()
            classifier.predict_one(photo)
            times[name].append(time.perf_counter() - started)
    p50 = {name: float(np.median(t)) * 1000 for name, t in times.items()}
    ratio = p50[NEW] / p50[OLD]
    return [
        f"| path, one 200x200 JPEG file ({runs} runs each, interleaved) | p50 | vs probabilities only | vs distance alone |",
        "|---|---|---|---|",
        f"| (a) ONNX Runtime, probabilities only (baseline) | {p50['probabilities only']:.2f} ms | 1.000x | |",
        f"| (b) + features + detector, distance alone + verdict | {p50[OLD]:.2f} ms | "
        f"{p50[OLD] / p50['probabilities only']:.3f}x | 1.000x |",
        f"| (c) + features + detector with the ImageNet head + verdict | {p50[NEW]:.2f} ms | "
        f"{p50[NEW] / p50['probabilities only']:.3f}x | {ratio:.3f}x (target <= 1.05x: {'met' if ratio <= 1.05 else 'MISSED'}) |",
    ]


def main() -> None:
    from dogcat.data import read_split
    from dogcat.inference import Classifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k", help="prepared dataset")
    parser.add_argument("--neither", type=Path, required=True, help="a folder of photos with no cat or dog, by category")
    parser.add_argument("--pets", type=Path, required=True, help="a folder of cat/ and dog/ photos from other collections")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle folder the dataset came from, for the photos outside it")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    classifier = Classifier.from_path(args.model)
    if classifier.detector is None or classifier.detector.head is None:
        parser.error(f"the model has no ImageNet-gated detector: {classifier.verdict_warning}")
    names = classifier.class_names
    test = read_split(args.data, "test")
    pets = photos_in(args.pets)
    real = {"test split": (judge(classifier, test.paths, [names[int(label)] for label in test.labels]), True),
            args.pets.name: (judge(classifier, *pets), True)}
    if args.source is not None:
        paths, labels = outside_photos(args.source, args.data)
        real["Kaggle photos outside the dataset"] = (judge(classifier, paths, [names[int(v)] for v in labels]), False)
    neither = judge(classifier, *photos_in(args.neither))
    sections = {
        "Real cats and dogs": pets_section(real, names),
        "Neither": neither_section(neither, args.neither.name),
        "Looks like": looks_like_section(neither, real[args.pets.name][0], (args.neither.name, args.pets.name),
                                         classifier.detector.head),
    }
    sections["Too small"], _ = size_section(classifier, args.data)
    photo = Path(sorted((args.data / "test" / "cat").glob("*.jpg"))[0]).read_bytes()
    sections["Cost"] = cost_section(args.model, photo, args.runs)
    info = classifier.detector.info
    body = "\n".join([
        f"model: `{args.model or 'models/dog_cat_classifier.keras'}` with `dog_cat_detector.npz` and `imagenet_head.npz`, "
        f"runtime {classifier.runtime}; distance threshold set on the validation split (turn away <= "
        f"{info.get('turn_away_target', 0.01):.0%}), ImageNet gate: pet probability (T = {info.get('pet_temperature')}) "
        f"under {info.get('pet_at_least')}. \"{OLD}\": the same detector with its ImageNet head off (the rule before "
        f"issue #26); \"{NEW}\": the shipped rule." + (f" Kaggle folder: `{args.source}`." if args.source else ""),
        *[line for title, lines in sections.items() for line in ("", f"### {title}", "", *lines)],
    ])
    print(body)
    command = shlex.join(["python", "benchmarks/verdicts.py", *sys.argv[1:]])
    write_section("Verdicts: neither, too small, and their cost", command, body, ("keras", "onnxruntime"))


if __name__ == "__main__":
    main()
