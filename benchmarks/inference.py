"""Inference speed, file to probabilities, one process: the plain Keras way vs dogcat's runtimes.

    python benchmarks/inference.py [--runs 50] [--files 256] [--print-only]

Baseline (measured in the same run): the seed project's way: PIL open, convert to RGB, resize
to 224x224, scale to [0, 1], `model.predict` on one image. Against it:
- dogcat Keras runtime: `Classifier.probabilities` (JPEG draft decoding, `predict_on_batch`);
- dogcat ONNX runtime: the same through ONNX Runtime on the file `dogcat export` writes.
Inputs: a 200x200 Kaggle JPEG ($DOGCAT_SHARED_DATA, else generated) and a 12-megapixel
(4032x3024) JPEG made by upscaling it. Batched throughput: 256 200x200 files via
`Classifier.predict`, against the baseline as a plain Keras user batches: every file opened and
resized the same way, stacked, and one `model.predict` on the batch (its default batch size, 32);
beside it, the one-photo-at-a-time baseline (one `model.predict` per file). Then, as its ceiling, the network alone on the same images already
decoded (`model.predict` / `predict_batch`), and ONNX Runtime on one thread, which shows whether
the network is compute-bound. Uses the shipped model, exported to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402


def p50_ms(function, runs: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def single_thread_onnx_rate(onnx_path: Path, images: np.ndarray, throughput) -> float:
    """Images/s of the exported network on one core: what each core adds to the two-core figure."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return throughput(lambda: [session.run(None, {name: images[i : i + 32]}) for i in range(0, len(images), 32)])


def make_photos(folder: Path, count: int = 256) -> tuple[Path, Path, list[Path]]:
    shared = os.environ.get("DOGCAT_SHARED_DATA")
    if shared and Path(shared).is_dir():
        small = sorted(Path(shared).glob("*.jpg"))[:count]
    else:
        rng = np.random.default_rng(0)
        small = []
        for i in range(count):
            path = folder / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path, quality=90)
            small.append(path)
    large = folder / "12mp.jpg"
    Image.open(small[0]).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC).save(large, quality=90)
    return small[0], large, small


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--files", type=int, default=256, help="200x200 files for the batched rows")
    parser.add_argument("--print-only", action="store_true", help="print the table; leave RESULTS.md as it is")
    args = parser.parse_args()
    import keras

    from dogcat.export import export_onnx
    from dogcat.inference import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("dog_cat_classifier.keras", "class_names.pkl"):
            shutil.copy(REPO / "models" / name, tmp / name)
        export_onnx(tmp / "dog_cat_classifier.keras")
        small, large, batch = make_photos(tmp, args.files)
        plain_model = keras.saving.load_model(tmp / "dog_cat_classifier.keras")
        keras_runtime = Classifier.from_path(tmp / "dog_cat_classifier.keras", runtime="keras")
        onnx_runtime = Classifier.from_path(tmp / "dog_cat_classifier.keras", runtime="onnx")

        def plain_pixels(path: Path) -> np.ndarray:
            return np.asarray(Image.open(path).convert("RGB").resize((224, 224)), np.float32) / 255.0

        def plain(path: Path):
            return plain_model.predict(plain_pixels(path)[None], verbose=0)

        def plain_batch(paths: list[Path]):  # how a plain Keras user classifies a folder: one predict call
            return plain_model.predict(np.stack([plain_pixels(p) for p in paths]), verbose=0)

        rows = []
        for label, path in (("200x200 JPEG", small), ("4032x3024 JPEG", large)):
            baseline = p50_ms(lambda path=path: plain(path), args.runs)
            timings = {name: p50_ms(lambda c=c, path=path: c.probabilities(path), args.runs)
                       for name, c in (("keras", keras_runtime), ("onnx", onnx_runtime))}
            rows.append((f"{label}, p50", f"{baseline:.1f} ms", f"{timings['keras']:.1f} ms ({baseline / timings['keras']:.1f}x)",
                         f"{timings['onnx']:.1f} ms ({baseline / timings['onnx']:.1f}x)"))

        def throughput(function) -> float:
            function()  # warm-up
            started = time.perf_counter()
            function()
            return len(batch) / (time.perf_counter() - started)

        plain_rate = throughput(lambda: plain_batch(batch))
        one_by_one = throughput(lambda: [plain(p) for p in batch])
        rates = {name: throughput(lambda c=c: c.predict(batch)) for name, c in (("keras", keras_runtime), ("onnx", onnx_runtime))}
        rows.append((f"{len(batch)} 200x200 files, images/s (baseline: one `model.predict` on the batch)", f"{plain_rate:.0f}",
                     f"{rates['keras']:.0f} ({rates['keras'] / plain_rate:.1f}x)", f"{rates['onnx']:.0f} ({rates['onnx'] / plain_rate:.1f}x)"))
        rows.append((f"same {len(batch)} files, baseline one `model.predict` per file, images/s", f"{one_by_one:.0f}", "-", "-"))

        # The ceiling: the network alone on already-decoded images, so decoding costs nothing.
        decoded = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224)), np.float32) / 255 for p in batch])
        plain_network = throughput(lambda: plain_model.predict(decoded, batch_size=32, verbose=0))
        networks = {name: throughput(lambda c=c: c.predict_batch(decoded)) for name, c in (("keras", keras_runtime), ("onnx", onnx_runtime))}
        rows.append((f"{len(batch)} decoded images, network only, images/s", f"{plain_network:.0f}",
                     f"{networks['keras']:.0f} ({networks['keras'] / plain_network:.1f}x)",
                     f"{networks['onnx']:.0f} ({networks['onnx'] / plain_network:.1f}x)"))
        one_core = single_thread_onnx_rate(tmp / "dog_cat_classifier.onnx", decoded, throughput)

        images = decoded[:32]
        difference = np.abs(onnx_runtime.predict_batch(images) - keras_runtime.predict_batch(images)).max()

    table = ("| measurement | plain `model.predict` (baseline) | dogcat, Keras runtime | dogcat, ONNX Runtime |\n"
             "|---|---|---|---|\n" + "\n".join(f"| {' | '.join(row)} |" for row in rows))
    table += (f"\n\nONNX Runtime on one thread (intra_op_num_threads=1), network only: {one_core:.0f} images/s, "
              f"so both cores give {networks['onnx'] / one_core:.2f}x one core.")
    table += f"\n\nMax |ONNX - Keras| probability difference on 32 photos: {difference:.1e}."
    print(table)
    if args.print_only:
        return
    source = "Kaggle sample" if os.environ.get("DOGCAT_SHARED_DATA") else "generated noise JPEGs"
    command = f"python benchmarks/inference.py --runs {args.runs}" + (f" --files {args.files}" if args.files != 256 else "")
    write_section("Inference: file to probabilities", command,
                  f"Photos: {source}; the shipped model. Ratios are speed-ups over the baseline.\n\n{table}",
                  ("keras", "tensorflow-cpu", "onnxruntime", "pillow"))


if __name__ == "__main__":
    main()
