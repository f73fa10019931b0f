"""Training: the default recipe the plain Keras way vs `dogcat train`, timed and scored in one run.

    python benchmarks/training.py [--data data/dogcat-4k] [--config configs/default.toml]
                                  [--baseline-epochs N]

Both train the model of the config (ImageNet MobileNetV2, flip + rotation, last block
fine-tuned) on the same 3,200 training and 400 validation images, for the config's epochs
(head-only epochs first, then fine-tuning with the small learning rate), with early stopping
off on both sides so that both run every epoch:
- baseline: `keras.utils.image_dataset_from_directory` (decode and resize every epoch,
  tf.data) scaled to [0, 1], then `model.fit`, recompiled between the phases;
- dogcat: `dogcat.train.train` end to end: decode once, cache the frozen trunk's output for
  `train.views` fixed views, train the top, write the run folder.
Wall time covers everything from reading the files to a trained model. Both models are then
scored on the 400 test images through `dogcat.evaluate` (the served preprocessing).
`--baseline-epochs N` (fewer than the config's) times only N baseline epochs (one head-only,
the rest fine-tuning) and projects the full run from them; the baseline is then not scored.
Needs the TensorFlow backend (the baseline uses tf.data) and the ImageNet file in the Keras cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402


def plain_keras_fit(config, data: Path, epochs: int) -> tuple[object, list[float]]:
    """The recipe as a plain Keras user writes it; returns the model and each epoch's seconds."""
    import keras

    from dogcat.model import build_model, set_fine_tuning

    tc = config.train

    def split(name: str, shuffle: bool):
        dataset = keras.utils.image_dataset_from_directory(
            data / name, labels="inferred", class_names=["cat", "dog"], image_size=(224, 224),
            batch_size=tc.batch_size, shuffle=shuffle, seed=tc.seed, verbose=False,
        )
        return dataset.map(lambda images, labels: (images / 255.0, labels))

    keras.utils.set_random_seed(tc.seed)
    train, val = split("train", True), split("val", False)
    model = build_model(config.model, 224, seed=tc.seed)
    head_epochs = tc.head_epochs if epochs == tc.epochs else 1  # a short, projected run times one of each
    seconds = []
    for epoch in range(epochs):
        if epoch in (0, head_epochs):
            head = epoch < head_epochs
            set_fine_tuning(model, 0 if head else config.model.fine_tune_blocks)
            model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate if head else tc.fine_tune_learning_rate),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        model.fit(train, validation_data=val, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
        seconds.append(time.perf_counter() - started)
        print(f"baseline epoch {epoch + 1}: {seconds[-1]:.1f}s", flush=True)
    return model, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument("--baseline-epochs", type=int, default=None)
    args = parser.parse_args()
    import keras

    from dogcat.config import load_config
    from dogcat.evaluate import evaluate
    from dogcat.inference import Classifier

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the baseline uses tf.data: run with KERAS_BACKEND=tensorflow")
    config = load_config(args.config, [f'data.dir="{args.data}"', "train.early_stopping_patience=0"])
    tc = config.train
    baseline_epochs = min(args.baseline_epochs or tc.epochs, tc.epochs)
    projected = baseline_epochs < tc.epochs

    started = time.perf_counter()
    baseline_model, epoch_seconds = plain_keras_fit(config, args.data, baseline_epochs)
    baseline_wall = time.perf_counter() - started
    if projected:  # one head-only epoch and the rest fine-tuning were timed
        head, tuned = epoch_seconds[0], sum(epoch_seconds[1:]) / max(len(epoch_seconds) - 1, 1)
        baseline_wall = tc.head_epochs * head + (tc.epochs - tc.head_epochs) * tuned
        baseline_metrics = None
    else:
        baseline_metrics = evaluate(Classifier(baseline_model, {0: "cat", 1: "dog"}), args.data, "test")

    from dogcat.train import train

    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        run = train(config, Path(run_dir) / "run", log=lambda line: print("dogcat", line, flush=True), progress=False)
        dogcat_wall = time.perf_counter() - started
        dogcat_fit = json.loads((run / "metrics.json").read_text())
        dogcat_metrics = evaluate(Classifier.from_path(run / "dog_cat_classifier.keras", runtime="keras"), args.data, "test")

    def score(metrics):
        return "not trained to the end" if metrics is None else f"{metrics['accuracy']:.4f} / {metrics['log_loss']:.4f}"

    rows = [
        ("wall time, files to trained model", f"{baseline_wall:.0f} s" + (" (projected)" if projected else ""),
         f"{dogcat_wall:.0f} s", f"{baseline_wall / dogcat_wall:.2f}x faster"),
        ("of which one-off decode + trunk cache", "-", f"{dogcat_fit['setup_seconds']:.0f} s", ""),
        ("mean epoch", f"{sum(epoch_seconds) / len(epoch_seconds):.1f} s",
         f"{dogcat_fit['train_seconds'] / dogcat_fit['epochs_run']:.1f} s", ""),
        ("test accuracy / log loss (400 images)", score(baseline_metrics), score(dogcat_metrics), ""),
    ]
    table = "| measurement | plain `image_dataset_from_directory` + `fit` (baseline) | `dogcat train` | ratio |\n"
    table += "|---|---|---|---|\n" + "\n".join(f"| {' | '.join(row)} |" for row in rows)
    print(table)
    command = "python benchmarks/training.py" + (f" --baseline-epochs {args.baseline_epochs}" if args.baseline_epochs else "")
    write_section(
        "Training: the default recipe", command,
        f"Data: {args.data.name} (3,200 train + 400 val images, 400 test). Config: {args.config.name}, "
        f"{tc.epochs} epochs ({tc.head_epochs} head-only), early stopping off on both sides; dogcat caches "
        f"{tc.views} views per image.\n\n{table}",
        ("keras", "tensorflow-cpu", "onnxruntime"),
    )


if __name__ == "__main__":
    main()
