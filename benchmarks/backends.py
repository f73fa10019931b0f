"""TensorFlow vs JAX in one run: fine-tuning step time and single-photo inference latency.

    python benchmarks/backends.py [--steps 10] [--requests 50]

Each backend runs in its own process (Keras fixes its backend at import) on the same inputs:
- training: the default model (ImageNet weights, last block unfrozen), `train_on_batch` on a
  batch of 32 images at 224 px, median over --steps steps after 2 warm-up steps;
- inference: `Classifier.probabilities` on a 200x200 JPEG file (decode + resize + model), p50 and
  p95 over --requests calls after 3 warm-up calls, with the shipped model on the Keras runtime.
TensorFlow, the default backend, is the baseline: ratios are JAX time / TensorFlow time.
Needs both backends installed (`pip install ".[tensorflow,jax]"`) and the ImageNet file cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import fine_tune_step_seconds, write_section  # noqa: E402


def worker(steps: int, requests: int, photo: str) -> dict:
    import keras
    import numpy as np

    from dogcat.inference import Classifier

    train_step = fine_tune_step_seconds(steps)
    classifier = Classifier.from_path(runtime="keras")  # the backend under test, not the ONNX twin
    latencies = []
    for call in range(requests + 3):
        started = time.perf_counter()
        classifier.probabilities(photo)
        if call >= 3:
            latencies.append(time.perf_counter() - started)
    return {
        "backend": keras.backend.backend(),
        "train_step_s": train_step,
        "predict_p50_ms": float(np.percentile(latencies, 50) * 1000),
        "predict_p95_ms": float(np.percentile(latencies, 95) * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps, args.requests, args.worker)))
        return

    import numpy as np
    from PIL import Image

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        pixels = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photo, quality=90)
        for backend in ("tensorflow", "jax"):
            command = [sys.executable, __file__, "--steps", str(args.steps), "--requests", str(args.requests),
                       "--worker", str(photo)]
            output = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend}, cwd=REPO,
                                    capture_output=True, text=True, check=True).stdout
            results[backend] = json.loads(output.strip().splitlines()[-1])
            assert results[backend]["backend"] == backend
    tf, jax = results["tensorflow"], results["jax"]
    rows = [
        ("fine-tune step, batch 32 at 224 px (median)", f"{tf['train_step_s']:.3f} s", f"{jax['train_step_s']:.3f} s",
         f"{jax['train_step_s'] / tf['train_step_s']:.2f}"),
        ("one 200x200 JPEG, file to probabilities, p50", f"{tf['predict_p50_ms']:.1f} ms",
         f"{jax['predict_p50_ms']:.1f} ms", f"{jax['predict_p50_ms'] / tf['predict_p50_ms']:.2f}"),
        ("same, p95", f"{tf['predict_p95_ms']:.1f} ms", f"{jax['predict_p95_ms']:.1f} ms",
         f"{jax['predict_p95_ms'] / tf['predict_p95_ms']:.2f}"),
    ]
    table = "| measurement | TensorFlow (baseline) | JAX | JAX / TF |\n|---|---|---|---|\n"
    table += "\n".join(f"| {' | '.join(row)} |" for row in rows)
    print(table)
    write_section("Backends: TensorFlow vs JAX", f"python benchmarks/backends.py --steps {args.steps} --requests {args.requests}",
                  table, ("keras", "tensorflow-cpu", "jax", "jaxlib"))


if __name__ == "__main__":
    main()
