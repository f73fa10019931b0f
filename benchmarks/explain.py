"""Explanations: what the Grad-CAM overlay costs per photo, as a ratio to a plain prediction.

    python benchmarks/explain.py [--model M] [--runs 100]

One photo (the shipped example cat, a 451x300 JPEG), file to result, through `Classifier.predict`
on each runtime: plain (verdict and probabilities), against explained (the same plus the heatmap
and the overlay picture drawn by dogcat.explain.overlay, as every app shows it), interleaved in
one run so a slow spell of the machine hits both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

PHOTO = REPO / "demos" / "examples" / "cat-chelsea.jpg"


def measure(classifier, photo: bytes, runs: int) -> tuple[float, float, float]:
    """p50 ms of (plain prediction, prediction with heatmap, prediction with heatmap and overlay)."""
    from dogcat.explain import overlay

    steps = {
        "plain": lambda: classifier.predict([photo]),
        "heatmap": lambda: classifier.predict([photo], explain=True),
        "overlay": lambda: overlay(photo, classifier.predict([photo], explain=True)[0].heatmap),
    }
    for step in steps.values():  # warm-up (the Keras runtime builds its feature-map model on first use)
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    for _ in range(runs):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return tuple(float(np.median(times[name])) * 1000 for name in steps)


def main() -> None:
    from dogcat.inference import Classifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    photo = PHOTO.read_bytes()
    rows = ["| runtime, one 451x300 JPEG file | plain p50 | + heatmap | + heatmap + overlay picture |", "|---|---|---|---|"]
    for runtime in ("onnx", "keras"):
        plain, heatmap, drawn = measure(Classifier.from_path(args.model, runtime=runtime), photo, args.runs)
        rows.append(f"| {runtime} | {plain:.1f} ms | {heatmap:.1f} ms ({heatmap / plain:.2f}x) "
                    f"| {drawn:.1f} ms ({drawn / plain:.2f}x) |")
        print(rows[-1], flush=True)
    command = "python benchmarks/explain.py" + (f" --model {args.model}" if args.model else "") + f" --runs {args.runs}"
    write_section("Explanations (Grad-CAM overlay cost)", command, "\n".join(rows),
                  packages=("keras", "tensorflow", "jax", "onnxruntime", "pillow", "numpy"))


if __name__ == "__main__":
    main()
