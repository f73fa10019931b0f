"""Training: the default recipe the plain Keras way vs `dogcat train`, alternated in one run.

    python benchmarks/training.py [--data data/dogcat-4k] [--config configs/default.toml]
                                  [--rounds 2] [--print-only] [section.key=value ...]

Both train the model of the config (ImageNet MobileNetV2, flip + rotation, last block
fine-tuned) on the same training and validation images, for the config's epochs (head-only
epochs first, then fine-tuning with the small learning rate), with early stopping off on both
sides so that both run every epoch:
- baseline: `keras.utils.image_dataset_from_directory` (decode and resize every epoch,
  tf.data) scaled to [0, 1], then `model.fit`, recompiled between the phases;
- dogcat: `dogcat.train.train` end to end: decode once, cache the frozen trunk's output for
  `train.views` fixed views, train the top, write the run folder (ONNX twin and "neither"
  detector included).

Equal footing:
- They alternate in one process, `--rounds` times (at least 2), in ABBA order (baseline, dogcat,
  then dogcat, baseline, ...), so a machine that slows down or speeds up during the run weighs on
  both; each round's ratio compares the two runs of that round, and the report gives every
  round's ratio and their spread (mean, sd, min-max).
- Both are scored the same way: both restore the weights of their best validation epoch (lowest
  val_loss), and both are calibrated, or neither, as the config's `train.calibrate` says (the
  default calibrates): the baseline's temperature is fitted on the validation split and folded
  into its last layer with `dogcat.calibration`, exactly as `dogcat train` does. Wall time covers
  everything from reading the files to a trained (and calibrated) model on both sides.
Both models are then scored on the test split through `dogcat.evaluate` (the served
preprocessing, Keras runtime). `section.key=value` overrides the config, e.g.
`train.epochs=2 train.head_epochs=1` for a quick check; `--print-only` prints the table without
writing RESULTS.md. Needs the TensorFlow backend (the baseline uses tf.data) and the ImageNet file
in the Keras cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402


def plain_keras_fit(config, data: Path) -> tuple[object, list[float], int, float | None]:
    """The recipe as a plain Keras user writes it, then the best val epoch restored (and calibrated).

    Returns the model, each epoch's seconds, the best epoch (1-based) and the temperature (None
    when the config does not calibrate).
    """
    import keras

    from dogcat.calibration import fit_temperature, fold_temperature, logits_of
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
    seconds, best_loss, best_epoch, best_weights = [], float("inf"), 0, None
    for epoch in range(tc.epochs):
        if epoch in (0, tc.head_epochs):
            head = epoch < tc.head_epochs
            set_fine_tuning(model, 0 if head else config.model.fine_tune_blocks)
            model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate if head else tc.fine_tune_learning_rate),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        history = model.fit(train, validation_data=val, initial_epoch=epoch, epochs=epoch + 1, verbose=0).history
        seconds.append(time.perf_counter() - started)
        val_loss = float(history["val_loss"][-1])
        if val_loss < best_loss:  # what keras.callbacks.ModelCheckpoint(save_best_only=True) keeps
            best_loss, best_epoch, best_weights = val_loss, epoch + 1, model.get_weights()
        print(f"baseline epoch {epoch + 1}: {seconds[-1]:.1f}s val_loss {val_loss:.4f}", flush=True)
    model.set_weights(best_weights)
    temperature = None
    if tc.calibrate:
        logits, labels = logits_of(model, list(val.as_numpy_iterator()))
        temperature = fit_temperature(logits, labels)
        fold_temperature(model, temperature)
    return model, seconds, best_epoch, temperature


def run_baseline(config, data: Path) -> dict:
    import keras

    from dogcat.evaluate import evaluate
    from dogcat.inference import Classifier

    keras.backend.clear_session()
    started = time.perf_counter()
    model, seconds, best_epoch, temperature = plain_keras_fit(config, data)
    wall = time.perf_counter() - started
    metrics = evaluate(Classifier(model, {0: "cat", 1: "dog"}), data, "test")
    return {"wall": wall, "epoch": sum(seconds) / len(seconds), "best_epoch": best_epoch, "temperature": temperature,
            "accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"], "setup": None}


def run_dogcat(config, data: Path) -> dict:
    import keras

    from dogcat.evaluate import evaluate
    from dogcat.inference import Classifier
    from dogcat.train import train

    keras.backend.clear_session()
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        run = train(config, Path(run_dir) / "run", log=lambda line: print("dogcat", line, flush=True), progress=False)
        wall = time.perf_counter() - started
        fit = json.loads((run / "training.json").read_text())
        metrics = evaluate(Classifier.from_path(run / "dog_cat_classifier.keras", runtime="keras"), data, "test")
    return {"wall": wall, "epoch": fit["train_seconds"] / fit["epochs_run"], "best_epoch": fit["best_epoch"],
            "temperature": (fit["calibration"] or {}).get("temperature"), "accuracy": metrics["accuracy"],
            "log_loss": metrics["log_loss"], "setup": fit["setup_seconds"]}


def spread(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f} (min {min(values):.{digits}f}, max {max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/dogcat pairs, in ABBA order (at least 2)")
    parser.add_argument("--print-only", action="store_true", help="print the table; leave RESULTS.md as it is")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: one round gives no spread")
    import keras

    from dogcat.config import load_config
    from dogcat.train import read_splits

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the baseline uses tf.data: run with KERAS_BACKEND=tensorflow")
    config = load_config(args.config, [f'data.dir="{args.data}"', *args.overrides, "train.early_stopping_patience=0"])
    tc = config.train
    counts = {name: len(split.paths) for name, split in read_splits(args.data).items()}

    runners = {"baseline": run_baseline, "dogcat": run_dogcat}
    results = []
    for index in range(args.rounds):
        order = ("baseline", "dogcat") if index % 2 == 0 else ("dogcat", "baseline")
        result = {"order": order}
        for name in order:
            print(f"round {index + 1}/{args.rounds}: {name}", flush=True)
            result[name] = runners[name](config, args.data)
            print(f"round {index + 1}: {name} {result[name]['wall']:.0f} s", flush=True)
        results.append(result)

    def score(run: dict) -> str:
        return f"{run['accuracy']:.4f} / {run['log_loss']:.4f} (epoch {run['best_epoch']})"

    ratios = [r["baseline"]["wall"] / r["dogcat"]["wall"] for r in results]
    table = ("| round | order | baseline wall time | `dogcat train` wall time | ratio | baseline test accuracy / log loss "
             "(best epoch) | dogcat test accuracy / log loss (best epoch) |\n|---|---|---|---|---|---|---|\n")
    table += "\n".join(
        f"| {i + 1} | {', '.join(r['order'])} | {r['baseline']['wall']:.0f} s | {r['dogcat']['wall']:.0f} s "
        f"| {ratio:.2f}x | {score(r['baseline'])} | {score(r['dogcat'])} |"
        for i, (r, ratio) in enumerate(zip(results, ratios, strict=True))
    )

    def over(name: str, key: str, digits: int) -> str:
        return spread([r[name][key] for r in results], digits)

    calibrated = "both calibrated on the validation split" if tc.calibrate else "neither calibrated"
    summary = (
        f"\n\nRatio, baseline / dogcat wall time, over the rounds: mean ± sd {spread(ratios)}.\n\n"
        f"| over the {args.rounds} rounds, mean ± sd (min, max) | baseline | `dogcat train` |\n|---|---|---|\n"
        f"| wall time, files to trained model, s | {over('baseline', 'wall', 0)} | {over('dogcat', 'wall', 0)} |\n"
        f"| of which one-off decode + trunk cache, s | - | {over('dogcat', 'setup', 0)} |\n"
        f"| mean epoch, s | {over('baseline', 'epoch', 1)} | {over('dogcat', 'epoch', 1)} |\n"
        f"| test accuracy | {over('baseline', 'accuracy', 4)} | {over('dogcat', 'accuracy', 4)} |\n"
        f"| test log loss | {over('baseline', 'log_loss', 4)} | {over('dogcat', 'log_loss', 4)} |\n"
    )
    if tc.calibrate:
        summary += (f"| fitted temperature | {over('baseline', 'temperature', 3)} | "
                    f"{over('dogcat', 'temperature', 3)} |\n")
    body = (
        f"Data: {args.data.name} ({counts['train']:,} train + {counts['val']:,} val images, {counts['test']:,} test). "
        f"Config: {args.config.name}{' with ' + ' '.join(args.overrides) if args.overrides else ''}, {tc.epochs} epochs "
        f"({tc.head_epochs} head-only), early stopping off on both sides; dogcat caches {tc.views} views per image. "
        f"Both scored on their best validation epoch (lowest val_loss, restored), {calibrated}, on the test split "
        f"through `dogcat.evaluate` (Keras runtime). The two alternate in one process (ABBA order); the ratio is "
        f"baseline / dogcat wall time within a round.\n\n{table}{summary}"
    )
    print(body)
    if args.print_only:
        return
    command = "python benchmarks/training.py" + (f" --rounds {args.rounds}" if args.rounds != 2 else "")
    command += "".join(f" {o}" for o in args.overrides)
    write_section("Training: the default recipe", command, body, ("keras", "tensorflow-cpu", "onnxruntime"))


if __name__ == "__main__":
    main()
