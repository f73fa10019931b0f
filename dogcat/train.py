"""`dogcat train`: fine-tune the classifier and write a self-contained run folder.

Two phases, as in the Keras transfer-learning guide: `head_epochs` with the whole base frozen
(a fresh head's large gradients would otherwise wreck the pretrained block), then the last
`fine_tune_blocks` blocks unfrozen and the model recompiled with a small learning rate.

After every epoch the run folder gets, each written atomically: `checkpoint.keras` (model and
optimizer), `best.weights.h5` when val_loss improves, `history.csv` and `state.json`. Running
the same `--run-dir` again resumes after the last finished epoch. At the end the best weights
are restored and the run folder holds `dog_cat_classifier.keras`, `class_names.pkl`,
`config.toml` (the resolved config), `history.csv`, `metrics.json` and `training_curves.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import keras

from dogcat.artifacts import (
    CLASS_NAMES,
    CLASS_NAMES_FILENAME,
    MODEL_FILENAME,
    save_atomic,
    save_class_names,
    write_text_atomic,
)
from dogcat.config import Config, load_config
from dogcat.data import read_split
from dogcat.dataset import load_split_batches
from dogcat.model import build_model, load_model, set_fine_tuning

HISTORY_FIELDS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")


class TrainError(RuntimeError):
    pass


def default_run_dir(config: Config) -> Path:
    return Path(config.train.output_dir) / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def train(config: Config, run_dir: str | Path | None = None, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Train (or resume) a run; returns the run folder."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is not None:
        saved = load_config(run_dir / "config.toml")
        if saved != config:
            raise TrainError(
                f"{run_dir} holds a run with a different config; resume it without overrides or pick a new "
                f"--run-dir. Received: run_dir={str(run_dir)!r}"
            )
        if state["finished"]:
            raise TrainError(f"This run has already finished. Received: run_dir={str(run_dir)!r}")
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.toml", config.to_toml())
        state = {"epoch": 0, "phase": None, "best_val_loss": None, "best_epoch": None, "wait": 0, "finished": False}

    tc, size = config.train, config.data.image_size
    keras.utils.set_random_seed(tc.seed)
    train_batches = load_split_batches(read_split(config.data.dir, "train"), size, tc.batch_size, True, tc.seed, "train", progress)
    val_batches = load_split_batches(read_split(config.data.dir, "val"), size, tc.batch_size, False, tc.seed, "val", progress)

    if state["epoch"] > 0:
        model = load_model(run_dir / "checkpoint.keras", compile=True)
    else:
        model = build_model(config.model, size, len(CLASS_NAMES), seed=tc.seed)
    history = _read_history(run_dir / "history.csv") if state["epoch"] > 0 else []

    for epoch in range(state["epoch"], tc.epochs):
        phase = "head" if epoch < tc.head_epochs and config.model.fine_tune_blocks > 0 else "fine_tune"
        if phase != state["phase"]:
            set_fine_tuning(model, 0 if phase == "head" else config.model.fine_tune_blocks)
            learning_rate = tc.learning_rate if phase == "head" else tc.fine_tune_learning_rate
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            state["phase"] = phase
        train_batches.set_epoch(epoch)
        started = time.perf_counter()
        result = model.fit(train_batches, validation_data=val_batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
        row = {key: float(values[-1]) for key, values in result.history.items()}
        row.update(epoch=epoch + 1, phase=phase, learning_rate=float(model.optimizer.learning_rate),
                   seconds=round(time.perf_counter() - started, 2))
        history.append(row)

        improved = state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, wait=0)
            save_atomic(run_dir / "best.weights.h5", model.save_weights)
        else:
            state["wait"] += 1
        save_atomic(run_dir / "checkpoint.keras", model.save)
        _write_history(run_dir / "history.csv", history)
        state["epoch"] = epoch + 1
        write_text_atomic(state_path, json.dumps(state, indent=2))
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
    final = build_model(dataclasses.replace(config.model, weights="none"), size, len(CLASS_NAMES))
    final.set_weights(model.get_weights())
    save_atomic(run_dir / MODEL_FILENAME, final.save)
    save_class_names(run_dir / CLASS_NAMES_FILENAME, CLASS_NAMES)
    best = next(row for row in history if row["epoch"] == state["best_epoch"])
    metrics = {
        "best_epoch": state["best_epoch"],
        "epochs_run": len(history),
        "val_loss": best["val_loss"],
        "val_accuracy": best["val_accuracy"],
        "train_seconds": round(sum(row["seconds"] for row in history), 1),
        "data_manifest_sha256": _manifest_hash(config.data.dir),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
    }
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _plot_history(history, run_dir / "training_curves.png")
    state["finished"] = True
    write_text_atomic(state_path, json.dumps(state, indent=2))
    (run_dir / "checkpoint.keras").unlink(missing_ok=True)  # only needed to resume
    log(f"best epoch {state['best_epoch']}: val_loss {best['val_loss']:.4f} val_acc {best['val_accuracy']:.4f}")
    log(f"model: {run_dir / MODEL_FILENAME}")
    return run_dir


def _manifest_hash(data_dir: str) -> str | None:
    manifest = Path(data_dir) / "manifest.csv"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def _write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


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
