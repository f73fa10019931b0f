"""Training speed: one fine-tuning epoch, the plain Keras way vs dogcat's trainer, same run.

    python benchmarks/training.py [--data data/dogcat-4k] [--epochs 1]

Both fit the same model (the default config: ImageNet MobileNetV2, block 16 unfrozen, flip +
rotation inside the model) on the same 3,200 training and 400 validation images for --epochs
epochs, after one untimed warm-up epoch each:
- baseline: `keras.utils.image_dataset_from_directory` (JPEG decode and resize every epoch,
  tf.data) scaled to [0, 1], then `model.fit`;
- dogcat: the trainer's pipeline (decoded once into uint8 through dogcat.preprocessing, then a
  `keras.utils.PyDataset`), then `model.fit`. Its one-off decoding time is reported separately.
Needs the TensorFlow backend (the baseline uses tf.data) and the ImageNet file in the Keras cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402


def fresh_model():
    import keras

    from dogcat.config import ModelConfig
    from dogcat.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(), 224, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def timed_fit(model, train, val, epochs: int) -> float:
    model.fit(train, validation_data=val, epochs=1, verbose=0)  # warm-up: tracing, caches
    started = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    import keras

    from dogcat.data import read_split
    from dogcat.dataset import load_split_batches

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the baseline uses tf.data: run with KERAS_BACKEND=tensorflow")

    def baseline_split(split: str, shuffle: bool):
        dataset = keras.utils.image_dataset_from_directory(
            args.data / split, labels="inferred", class_names=["cat", "dog"], image_size=(224, 224),
            batch_size=32, shuffle=shuffle, seed=0, verbose=False,
        )
        return dataset.map(lambda images, labels: (images / 255.0, labels))

    baseline = timed_fit(fresh_model(), baseline_split("train", True), baseline_split("val", False), args.epochs)

    started = time.perf_counter()
    train = load_split_batches(read_split(args.data, "train"), 224, 32, True, 0, "train", progress=False)
    val = load_split_batches(read_split(args.data, "val"), 224, 32, False, 0, "val", progress=False)
    decode_once = time.perf_counter() - started
    dogcat = timed_fit(fresh_model(), train, val, args.epochs)

    rows = [
        ("plain `image_dataset_from_directory` + `fit` (baseline), s/epoch", f"{baseline:.1f}"),
        ("dogcat trainer pipeline + `fit`, s/epoch", f"{dogcat:.1f} ({baseline / dogcat:.2f}x faster)"),
        ("dogcat one-off decode of 3,600 images, s", f"{decode_once:.1f}"),
        ("projected 10 epochs: baseline / dogcat, min",
         f"{10 * baseline / 60:.1f} / {(10 * dogcat + decode_once) / 60:.1f}"),
    ]
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    write_section("Training: one fine-tuning epoch", f"python benchmarks/training.py --epochs {args.epochs}",
                  f"Data: {args.data.name} (3,200 train + 400 val images). Both sides fit the default "
                  f"model in the fine-tuning phase, after an untimed warm-up epoch.\n\n{table}",
                  ("keras", "tensorflow-cpu"))


if __name__ == "__main__":
    main()
