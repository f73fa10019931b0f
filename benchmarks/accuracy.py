"""Accuracy of a model through the served path, on the test split and on photos outside the dataset.

    python benchmarks/accuracy.py [--model M] [--data data/dogcat-4k] [--source KAGGLE_TRAIN_DIR]

The 400-image test split pins accuracy down to about +/-1.5 points, so this also scores every
labelled photo in `--source` (default $DOGCAT_SHARED_DATA) that `dogcat data prepare` did not
pick for the dataset: the 5,000-image Kaggle sample leaves 1,000 such photos, which no training,
early-stopping or calibration step has seen. Both go through `Classifier.predict`, the path the
CLI and the apps use (ONNX Runtime when the model has a matching export).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for a proportion (Wilson score), sane near 100% where the normal one is not."""
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def outside_photos(source: Path, data_dir: Path) -> tuple[list[Path], np.ndarray]:
    """Kaggle-named photos (cat.N.jpg / dog.N.jpg) in `source` that the dataset's manifest does not hold."""
    with (data_dir / "manifest.csv").open(newline="") as handle:
        used = {Path(row["path"]).name for row in csv.DictReader(handle)}
    paths = sorted(p for p in source.glob("*.jpg") if p.name.split(".")[0] in ("cat", "dog") and p.name not in used)
    return paths, np.array([int(p.name.startswith("dog")) for p in paths])


def main() -> None:
    from dogcat.evaluate import evaluate, score_files
    from dogcat.inference import Classifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k", help="prepared dataset")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle folder the dataset was prepared from (default: $DOGCAT_SHARED_DATA)")
    args = parser.parse_args()
    if args.source is None or not args.source.is_dir():
        parser.error(f"--source must be the Kaggle training folder. Received: source={args.source}")

    classifier = Classifier.from_path(args.model)
    rows = []
    test = evaluate(classifier, args.data, "test")
    rows.append(("test split", test))
    rows.append(("Kaggle photos not in the dataset", score_files(classifier, *outside_photos(args.source, args.data))))

    lines = [
        f"model: `{Path(args.model).name if args.model else 'models/dog_cat_classifier.keras'}`, runtime: {classifier.runtime}",
        "",
        "| images | count | accuracy (95% interval) | errors | log loss |",
        "|---|---|---|---|---|",
    ]
    for name, metrics in rows:
        count = metrics["count"]
        correct = round(metrics["accuracy"] * count)
        low, high = wilson_interval(correct, count)
        lines.append(f"| {name} | {count} | {metrics['accuracy']:.4f} ({low:.3f}-{high:.3f}) | {count - correct} | "
                     f"{metrics['log_loss']:.4f} |")
    body = "\n".join(lines)
    print(body)
    command = "python benchmarks/accuracy.py" + (f" --model {args.model}" if args.model else "")
    write_section("Accuracy: test split and photos outside the dataset", command, body, ("keras", "onnxruntime"))


if __name__ == "__main__":
    main()
