"""Pillow (dogcat's decoder) against OpenCV: file bytes to the 224x224 RGB model input.

    pip install opencv-python-headless   # not a dogcat dependency: only this benchmark uses it
    python benchmarks/decoders.py [--runs 40] [--photos 200]

Pillow path: `dogcat.preprocessing.decode_image`, as training and serving call it (JPEG draft
decoding at 1/2, 1/4 or 1/8 scale, EXIF orientation, mode conversion, size checks, bilinear
resize). OpenCV path, as fast as OpenCV offers: `cv2.imdecode` with the largest
IMREAD_REDUCED_COLOR_{2,4,8} that stays at or above 224 px on the shorter side (libjpeg's same
reduced-scale decoding; EXIF applied by default), BGR -> RGB, `cv2.resize` with INTER_AREA.
Inputs: a 200x200 Kaggle JPEG, a 12-megapixel JPEG (4032x3024, made by upscaling a Kaggle
photo), and a 2-megapixel PNG of the same. Timings are p50 over `--runs`, the two decoders
interleaved in one run. Then both decoders feed the shipped model (ONNX Runtime) on `--photos`
test photos: pixel differences and how far the probabilities move, i.e. whether OpenCV would
give the same tensors as the path the model was trained on.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

SIZE = 224


def opencv_decode(data: bytes, size: int = SIZE) -> np.ndarray:
    import cv2

    buffer = np.frombuffer(data, np.uint8)
    flag = cv2.IMREAD_COLOR
    # OpenCV has no header-only read; Pillow's reads just the header (a decode to probe the size
    # would cost as much as the real one, since the entropy decoding does not shrink).
    short = min(Image.open(io.BytesIO(data)).size)
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if short // factor >= size:
            flag = reduced
            break
    image = cv2.imdecode(buffer, flag)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _inputs(kaggle: Path) -> dict[str, bytes]:
    photo = Image.open(kaggle).convert("RGB")
    big = photo.resize((4032, 3024), Image.Resampling.LANCZOS)
    jpeg, png = io.BytesIO(), io.BytesIO()
    big.save(jpeg, format="JPEG", quality=90)
    big.resize((1632, 1224), Image.Resampling.LANCZOS).save(png, format="PNG")
    return {"200x200 JPEG": kaggle.read_bytes(), "12 MP JPEG (4032x3024)": jpeg.getvalue(),
            "2 MP PNG (1632x1224)": png.getvalue()}


def _p50_ms(function, data: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function(data)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


def main() -> None:
    from dogcat.data import read_split
    from dogcat.inference import Classifier
    from dogcat.preprocessing import decode_image, to_model_input

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k")
    args = parser.parse_args()

    test = read_split(args.data, "test").paths
    rows = ["| input | Pillow (dogcat) p50 | OpenCV p50 | OpenCV / Pillow | max pixel difference |",
            "|---|---|---|---|---|"]
    for name, data in _inputs(Path(test[0])).items():
        for _ in range(3):  # warm-up
            decode_image(data), opencv_decode(data)
        pillow, opencv = [], []
        for _ in range(args.runs):  # interleaved: a slow spell of this VM hits both
            pillow.append(_p50_ms(decode_image, data, 1))
            opencv.append(_p50_ms(opencv_decode, data, 1))
        difference = int(np.abs(decode_image(data).astype(int) - opencv_decode(data).astype(int)).max())
        p, o = float(np.median(pillow)), float(np.median(opencv))
        rows.append(f"| {name} | {p:.2f} ms | {o:.2f} ms | {o / p:.2f}x | {difference} |")

    classifier = Classifier.from_path()
    photos = [Path(p).read_bytes() for p in test[: args.photos]]
    by_pillow = np.stack([decode_image(d) for d in photos])
    by_opencv = np.stack([opencv_decode(d) for d in photos])
    pixels = np.abs(by_pillow.astype(int) - by_opencv.astype(int))
    p_pillow = classifier.predict_batch(to_model_input(by_pillow))
    p_opencv = classifier.predict_batch(to_model_input(by_opencv))
    shift = np.abs(p_pillow - p_opencv)[:, 0]
    agree = float(np.mean(p_pillow.argmax(1) == p_opencv.argmax(1)))
    body = "\n".join([
        "Decode + resize to the 224x224 model input, one file in memory, p50 of "
        f"{args.runs} interleaved runs each:", "", *rows, "",
        f"The shipped model (runtime {classifier.runtime}) on {len(photos)} test photos decoded both ways: "
        f"mean pixel difference {pixels.mean():.2f} (max {pixels.max()}), P(cat) moved by {np.median(shift):.4f} "
        f"median and {shift.max():.4f} at most, labels agree on {agree:.1%}.",
    ])
    print(body)
    write_section("Decoders: Pillow vs OpenCV", "python benchmarks/decoders.py", body,
                  ("pillow", "opencv-python-headless", "onnxruntime"))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
