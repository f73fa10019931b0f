"""Verdicts: how well "neither" and "too small" work, and what they cost per photo.

    python benchmarks/verdicts.py --neither ../shared/data/ood-dev [--model M] [--data data/dogcat-4k]
                                  [--source KAGGLE_TRAIN_DIR] [--runs 200]

1. The detector (issue #12's targets): share of the test split's real cats and dogs turned away
   as "neither" (threshold set on val), share of `--neither` photos flagged, by category
   (everyday: people, scenes, food, vehicles, objects, plants_flowers; animals: the rest),
   accuracy on the test photos judged cat or dog against accuracy on all of them, and the share
   of the Kaggle photos outside the dataset turned away. All through `dogcat.evaluate`.
2. Too small: the test photos scaled down (Lanczos, aspect kept) to a shorter side of 24 to 128
   px, classified through the served path; accuracy per size, plotted to
   benchmarks/verdict_sizes.png. `predict.min_side` should be the smallest size measured at
   >= 95%.
3. Cost: p50 latency of one 200x200 JPEG, file to verdict, on the ONNX path, against the same
   path returning probabilities only (the path before verdicts), interleaved in one run.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from benchmarks.accuracy import outside_photos  # noqa: E402

EVERYDAY = ("people", "scenes", "food", "vehicles", "objects", "plants_flowers")
SIZES = (24, 32, 48, 64, 80, 96, 128)
PLOT = Path(__file__).resolve().parent / "verdict_sizes.png"


def detector_section(classifier, data: Path, neither: Path, source: Path | None) -> list[str]:
    from dogcat.evaluate import evaluate, score_files

    metrics = evaluate(classifier, data, "test", neither_dir=neither)
    folder = metrics["neither_folder"]
    groups = {"everyday": [], "animals": []}
    for name, category in folder["categories"].items():
        groups["everyday" if name in EVERYDAY else "animals"].append(category)
    lines = [
        "| photos | count | called neither |",
        "|---|---|---|",
        f"| test split: real cats and dogs (target <= 1%) | {metrics['count']} | {metrics['turned_away']['neither']:.2%} |",
    ]
    if source is not None:
        outside = score_files(classifier, *outside_photos(source, data))
        lines.append(f"| Kaggle cats and dogs outside the dataset | {outside['count']} | "
                     f"{outside['turned_away']['neither']:.2%} |")
    for group, target in (("everyday", ">= 99%"), ("animals", ">= 90%")):
        count = sum(c["count"] for c in groups[group])
        flagged = sum(c["count"] * c["flagged"] for c in groups[group])
        lines.append(f"| {neither.name} {group} (target {target}) | {count} | {flagged / count:.2%} |")
    for name, category in folder["categories"].items():
        lines.append(f"| - {name} | {category['count']} | {category['flagged']:.2%} |")
    lines += [
        "",
        f"Test accuracy: {metrics['accuracy']:.4f} on all {metrics['count']} photos (the classifier alone), "
        f"{metrics['accuracy_judged']:.4f} on the {metrics['count'] - metrics['verdicts']['neither']} not turned away. "
        f"Verdicts on the test split: " + ", ".join(f"{k} {v}" for k, v in metrics["verdicts"].items()) + ".",
    ]
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

    with_verdicts = Classifier.from_path(model, runtime="onnx")
    before = Classifier.from_path(model, runtime="onnx")
    before.detector = None
    before.runner.outputs = before.runner.outputs[:1]  # probabilities only: the path before verdicts
    times = {"before": [], "verdicts": []}
    for _ in range(5):  # warm-up
        with_verdicts.classify_one(photo), before.classify_one(photo)
    for _ in range(runs):  # interleaved, so a slow spell of this VM hits both
        for name, classifier in (("before", before), ("verdicts", with_verdicts)):
            started = time.perf_counter()
            classifier.classify_one(photo)
            times[name].append(time.perf_counter() - started)
    before_ms, verdict_ms = (float(np.median(times[k])) * 1000 for k in ("before", "verdicts"))
    return [
        "| path, one 200x200 JPEG file | p50 |",
        "|---|---|",
        f"| ONNX Runtime, probabilities only (baseline) | {before_ms:.2f} ms |",
        f"| ONNX Runtime, probabilities + features + detector + verdict | {verdict_ms:.2f} ms "
        f"({verdict_ms / before_ms:.3f}x; target <= 1.15x) |",
    ]


def main() -> None:
    from dogcat.inference import Classifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k", help="prepared dataset")
    parser.add_argument("--neither", type=Path, required=True, help="a folder of photos with no cat or dog, by category")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle folder the dataset came from, for the photos outside it")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    classifier = Classifier.from_path(args.model)
    if classifier.detector is None:
        parser.error(f"the model has no usable detector: {classifier.verdict_warning}")
    detector = detector_section(classifier, args.data, args.neither, args.source)
    sizes, _ = size_section(classifier, args.data)
    photo = Path(sorted((args.data / "test" / "cat").glob("*.jpg"))[0]).read_bytes()
    cost = cost_section(args.model, photo, args.runs)
    body = "\n".join([
        f"model: `{args.model or 'models/dog_cat_classifier.keras'}` with `dog_cat_detector.npz`, runtime "
        f"{classifier.runtime}; threshold set on the validation split (turn away <= "
        f"{classifier.detector.info.get('turn_away_target', 0.01):.0%}).",
        "", "### Neither", "", *detector, "", "### Too small", "", *sizes, "", "### Cost", "", *cost,
    ])
    print(body)
    command = "python benchmarks/verdicts.py --neither ../shared/data/ood-dev" + (f" --model {args.model}" if args.model else "")
    write_section("Verdicts: neither, too small, and their cost", command, body, ("keras", "onnxruntime"))


if __name__ == "__main__":
    main()
