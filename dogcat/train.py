"""`dogcat train`: fine-tune the classifier and write a self-contained run folder.

Two phases, as in the Keras transfer-learning guide: `head_epochs` with the whole base frozen
(a fresh head's large gradients would otherwise wreck the pretrained block), then the last
`fine_tune_blocks` blocks unfrozen and the model recompiled with a small learning rate.

With `train.views` (the default) the frozen part of the base runs once per fixed augmented view
of each image, before the first epoch, and the epochs train only the top of the network on
those cached activations (dogcat.features); `train.views = 0` runs the whole network every step.

After every epoch the run folder gets, each written atomically: `checkpoint.weights.h5` and
`optimizer.npz` (the Adam state), `best.weights.h5` when val_loss improves, `history.csv` and `state.json`. Running
the same `--run-dir` again resumes after the last finished epoch. At the end the best weights
are restored, a softmax temperature fitted on the validation split is folded into the last layer
(`train.calibrate`, dogcat.calibration), and the run folder holds `dog_cat_classifier.keras`, `class_names.pkl`,
its ONNX twin `dog_cat_classifier.onnx`, the "neither" detector `dog_cat_detector.npz` (fitted on the
training and validation photos, dogcat.detector), `config.toml` (the resolved config),
`history.csv`, `training.json` (the record model cards show) and `training_curves.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np

from dogcat.artifacts import (
    CLASS_NAMES,
    CLASS_NAMES_FILENAME,
    MODEL_FILENAME,
    save_all_atomic,
    save_atomic,
    save_class_names,
    strict_json,
    write_text_atomic,
)
from dogcat.calibration import fit_temperature, fold_temperature, log_loss_at, logits_of
from dogcat.config import Config, load_config, validate_config
from dogcat.data import LABELS, Split, read_split
from dogcat.dataset import ImageBatches, decode_all
from dogcat.errors import DogcatError
from dogcat.export import export_onnx, fit_detector_beside
from dogcat.features import CachedViews, cache_activations, split_model, trunk_function, view_keys
from dogcat.model import build_model, set_fine_tuning
from dogcat.model_folder import CONFIG_FILENAME, TRAINING_RECORD_FILENAME

CHECKPOINT_FILENAME = "checkpoint.weights.h5"
OPTIMIZER_FILENAME = "optimizer.npz"
HISTORY_FIELDS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")


class TrainError(DogcatError, RuntimeError):
    pass


def default_run_dir(config: Config) -> Path:
    return Path(config.train.output_dir) / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def train(config: Config, run_dir: str | Path | None = None, log: Callable[[str], None] = print, progress: bool = True,
          deployable: bool = True, activation_memo: MutableMapping[tuple, np.ndarray] | None = None) -> Path:
    """Train (or resume) a run; returns the run folder.

    `deployable=False` skips the ONNX twin and the "neither" detector: a tuning trial
    (dogcat.tune) is scored on its validation loss and never served, and the detector alone runs
    every training and validation photo through the whole network once more.
    `activation_memo`, a mapping kept across runs on the same unchanged dataset (dogcat.tune's
    trials), lends each run the cached views an earlier run computed (dogcat.features.cache_activations).
    """
    validate_config(config)  # load_config already did; this covers a Config built in Python
    splits = read_splits(config.data.dir)  # before the run folder exists: a bad data folder leaves nothing behind
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is not None:
        saved = load_config(run_dir / CONFIG_FILENAME)
        if saved != config:
            raise TrainError(f"{run_dir} holds a run with a different config; resume it without overrides or pick a "
                             f"new --run-dir. Received: run_dir={str(run_dir)!r}")
        if state["finished"]:
            raise TrainError(f"This run has already finished. Received: run_dir={str(run_dir)!r}")
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        write_text_atomic(run_dir / CONFIG_FILENAME, config.to_toml())  # creates run_dir; an OSError names the file
        state = {"epoch": 0, "phase": None, "best_val_loss": None, "best_epoch": None, "wait": 0, "finished": False}

    tc, size = config.train, config.data.image_size
    started_at = time.perf_counter()
    keras.utils.set_random_seed(tc.seed)
    model = build_model(config.model, size, len(CLASS_NAMES), seed=tc.seed)
    if state["epoch"] > 0:
        model.load_weights(run_dir / CHECKPOINT_FILENAME)
    fitted, train_batches, val_batches = _fit_inputs(config, splits, model, progress, log, activation_memo)
    setup_seconds = time.perf_counter() - started_at
    history = _read_history(run_dir / "history.csv") if state["epoch"] > 0 else []

    compiled_phase = None
    for epoch in range(state["epoch"], tc.epochs):
        if tc.early_stopping_patience and state["wait"] >= tc.early_stopping_patience:
            break  # a run that stopped early, then failed writing its final files, is rerun to finish
        phase = "head" if epoch < tc.head_epochs and config.model.fine_tune_blocks > 0 else "fine_tune"
        if phase != compiled_phase:
            set_fine_tuning(model, 0 if phase == "head" else config.model.fine_tune_blocks)
            learning_rate = tc.learning_rate if phase == "head" else tc.fine_tune_learning_rate
            fitted.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            if phase == state["phase"]:  # resuming mid-phase: continue with the saved Adam moments
                _load_optimizer(fitted, run_dir / OPTIMIZER_FILENAME)
            compiled_phase = state["phase"] = phase
        train_batches.set_epoch(epoch)
        _reseed(model, tc.seed, epoch)
        started = time.perf_counter()
        # shuffle=False: the batches already come in an order drawn from (seed, epoch); fit's own
        # shuffle of them draws from Python's global `random`, whose state a resumed process lacks.
        result = fitted.fit(train_batches, validation_data=val_batches, initial_epoch=epoch, epochs=epoch + 1,
                            shuffle=False, verbose=0)
        row = {key: float(values[-1]) for key, values in result.history.items()}
        row.update(epoch=epoch + 1, phase=phase, learning_rate=float(fitted.optimizer.learning_rate),
                   seconds=round(time.perf_counter() - started, 2))
        history.append(row)

        improved = state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, wait=0)
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        # One commit per epoch, state.json last: a failed write (a full disk) changes none of these
        # files, so the checkpoint never runs ahead of the state and a rerun resumes cleanly.
        epoch_files: dict[Path, Callable[[Path], object]] = {run_dir / "best.weights.h5": model.save_weights} if improved else {}
        epoch_files.update({
            run_dir / CHECKPOINT_FILENAME: model.save_weights,
            run_dir / OPTIMIZER_FILENAME: lambda tmp: tmp.write_bytes(_optimizer_bytes(fitted)),
            run_dir / "history.csv": lambda tmp: tmp.write_text(_history_text(history), encoding="utf-8"),
            state_path: lambda tmp: tmp.write_text(json.dumps(state, indent=2), encoding="utf-8"),
        })
        save_all_atomic(epoch_files)
        log(  # after the checkpoint: an epoch that was reported is never redone
            f"epoch {epoch + 1}/{tc.epochs} [{phase}] loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} {row['seconds']:.0f}s"
            + (" *" if improved else "")
        )
        if tc.early_stopping_patience and state["wait"] >= tc.early_stopping_patience:
            log(f"early stopping: val_loss has not improved for {state['wait']} epochs")
            break

    # Restore the best epoch into a fresh, uncompiled model: the shipped file carries no optimizer state.
    model.load_weights(run_dir / "best.weights.h5")
    calibration = _calibrate(fitted, val_batches, log) if tc.calibrate else None
    final = build_model(dataclasses.replace(config.model, weights="none"), size, len(CLASS_NAMES))
    final.set_weights(model.get_weights())
    save_atomic(run_dir / MODEL_FILENAME, final.save)
    save_class_names(run_dir / CLASS_NAMES_FILENAME, CLASS_NAMES)
    # The ONNX twin (the fast runtime, and the pooled features) and the "neither" detector beside
    # the model: a finished run folder serves verdicts as it is (dogcat.detector).
    if deployable:
        export_onnx(run_dir / MODEL_FILENAME)
        fit_detector_beside(run_dir / MODEL_FILENAME, config.data.dir, config.predict.turn_away,
                            config.predict.unsure_share, log)
    best = next(row for row in history if row["epoch"] == state["best_epoch"])
    metrics = {
        "best_epoch": state["best_epoch"],
        "epochs_run": len(history),
        "val_loss": best["val_loss"],
        "val_accuracy": best["val_accuracy"],
        "train_seconds": round(sum(row["seconds"] for row in history), 1),
        "setup_seconds": round(setup_seconds, 1),  # this session's decoding (and caching, with views)
        "views": tc.views,
        "calibration": calibration,
        "data_manifest_sha256": _manifest_hash(config.data.dir),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
    }
    write_text_atomic(run_dir / TRAINING_RECORD_FILENAME, strict_json(metrics, indent=2) + "\n")
    _plot_history(history, run_dir / "training_curves.png")
    state["finished"] = True
    write_text_atomic(state_path, json.dumps(state, indent=2))
    for name in (CHECKPOINT_FILENAME, OPTIMIZER_FILENAME):  # only needed to resume
        (run_dir / name).unlink(missing_ok=True)
    log(f"best epoch {state['best_epoch']}: val_loss {best['val_loss']:.4f} val_acc {best['val_accuracy']:.4f}")
    log(f"model: {run_dir / MODEL_FILENAME}")
    return run_dir


def _reseed(model: keras.Model, seed: int, epoch: int) -> None:
    """Set every random layer's seed state (dropout, and augmentation with views = 0) from (seed, epoch).

    These states advance with every training step and are not in the checkpoint, so a resumed run
    would otherwise redraw its dropout masks from the start and end with different weights.
    """
    for index, layer in enumerate(model.layers):
        generators = [value for value in vars(layer).values() if isinstance(value, keras.random.SeedGenerator)]
        generators += list(getattr(layer, "_backend_generators", {}).values())
        for generator in generators:
            state = np.random.default_rng([seed, epoch, index]).integers(0, 2**31 - 1, size=2)
            generator.state.assign(keras.ops.convert_to_tensor(state, dtype=generator.state.dtype))


def _calibrate(fitted: keras.Model, val_batches, log: Callable[[str], None]) -> dict:
    """Fit the softmax temperature on the validation split and fold it into the model's last layer."""
    logits, labels = logits_of(fitted, val_batches)
    temperature = fit_temperature(logits, labels)
    before, after = log_loss_at(logits, labels, 1.0), log_loss_at(logits, labels, temperature)
    fold_temperature(fitted, temperature)
    log(f"calibrated: temperature {temperature:.3f}, val_loss {before:.4f} -> {after:.4f}")
    return {"temperature": temperature, "val_loss_before": before, "val_loss_after": after}


def read_splits(data_dir: str | Path) -> dict[str, Split]:
    """The train, val and test splits, each required to hold every class.

    A split without one class trains a model that answers the other class for everything (with
    a perfect validation score), or cannot measure it: refused before any work is done.
    """
    splits = {name: read_split(data_dir, name) for name in ("train", "val", "test")}
    for name, split in splits.items():
        for index, label in enumerate(LABELS):
            if not np.any(split.labels == index):
                raise TrainError(
                    f"The {name} split has no {label} images; every split needs every class. "
                    f"Received: data.dir={str(data_dir)!r}"
                )
    return splits


def _fit_inputs(config: Config, splits: dict[str, Split], model: keras.Model, progress: bool, log: Callable[[str], None],
                memo: MutableMapping[tuple, np.ndarray] | None = None):
    """(model to fit, train batches, val batches).

    With `train.views`, the top of the network on cached frozen-trunk activations (see
    dogcat.features); with views = 0, the whole model on images, augmented on the fly.
    """
    tc, size = config.train, config.data.image_size
    train_split, val_split = splits["train"], splits["val"]
    train_images = decode_all(train_split.paths, size, "decoding train", progress)
    val_images = decode_all(val_split.paths, size, "decoding val", progress)
    if not tc.views:
        return (model, ImageBatches(train_images, train_split.labels, tc.batch_size, True, tc.seed),
                ImageBatches(val_images, val_split.labels, tc.batch_size))
    started = time.perf_counter()
    _, top = split_model(model, config.model.fine_tune_blocks)
    trunk, runtime = trunk_function(model, config.model.fine_tune_blocks)
    # Everything the activations depend on besides the view, its augmentation and the seed (view_keys).
    key = (str(Path(config.data.dir).resolve()), size, config.model.weights, config.model.fine_tune_blocks)
    reused = 0 if memo is None else sum(k in memo for k in view_keys(config.model, tc.views, tc.seed, (*key, "train")))
    train_cache = cache_activations(trunk, train_images, config.model, tc.views, tc.seed, "caching train", progress,
                                    memo=memo, memo_key=(*key, "train"))
    val_cache = cache_activations(trunk, val_images, config.model, 1, tc.seed, "caching val", progress,
                                  memo=memo, memo_key=(*key, "val"))
    log(f"cached the frozen trunk's output for {tc.views} views of {len(train_images)} training images "
        f"({runtime}, {time.perf_counter() - started:.0f}s{f', {reused} reused' if reused else ''})")
    return (top, CachedViews(train_cache, train_split.labels, tc.batch_size, True, tc.seed),
            CachedViews(val_cache, val_split.labels, tc.batch_size))


def _optimizer_bytes(model: keras.Model) -> bytes:
    store: dict = {}
    model.optimizer.save_own_variables(store)
    buffer = io.BytesIO()
    np.savez(buffer, **store)
    return buffer.getvalue()


def _load_optimizer(model: keras.Model, path: Path) -> None:
    model.optimizer.build(model.trainable_variables)
    with np.load(path) as store:
        model.optimizer.load_own_variables(dict(store))


def _manifest_hash(data_dir: str) -> str | None:
    manifest = Path(data_dir) / "manifest.csv"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def _history_text(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _read_history(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (v if k == "phase" else int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.plot(epochs, [row[key] for row in history], marker="o", label=f"train {key}")
        axis.plot(epochs, [row[f"val_{key}"] for row in history], marker="o", label=f"val {key}")
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    save_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)
