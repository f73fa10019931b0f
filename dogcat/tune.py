"""`dogcat tune`: set what the seed recipe leaves open by a search (Optuna), not by a guess.

The architecture stays the seed's (MobileNetV2 at 224, its head, flip + rotation, fine-tuning
at the top of the network); SPACE below is what the seed leaves open. Each trial is one
`dogcat.train.train` run on the cached trunk activations, without the ONNX twin and the
"neither" detector (`deployable=False`: a trial is scored, never served), and its score is the
validation log loss after temperature calibration (training.json's `calibration.val_loss_after`;
the best epoch's `val_loss` when `train.calibrate` is off), the loss of the model a run ships.
Trials in one process share the trunk activations they cache (ACTIVATION_MEMO_BYTES).

The search folder holds `study.db` (the Optuna study, SQLite), `config.toml` (the base config,
resolved), `trials.csv` (one row per finished trial), `best.toml` (the best trial's complete
config, which `dogcat train --config` takes as it is) and `trials/NNNN/`, each trial's run folder
(its `config.toml`, `history.csv`, `training.json`; the weights are deleted once it is scored: the
winner is retrained, across seeds, before it is adopted).

Resuming: running the same search folder again loads the study and runs only the trials still
missing (`trials` counts finished trials in total). A trial cut short (Ctrl-C, or a killed
process that left it RUNNING) is marked failed and queued again with the same parameters and the
same run folder, so `train` resumes it after its last finished epoch. One process per search
folder: a RUNNING trial found at start is taken as a dead process's.

The 400 validation photos pick the winner, so they flatter it: a tuned config is adopted only
after benchmarks/seeds.py scores it across seeds on the test split and on the photos outside the
dataset (README, "Tuning").
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dogcat.artifacts import MODEL_FILENAME, write_text_atomic
from dogcat.config import Config, load_config, validate_config
from dogcat.errors import DogcatError
from dogcat.model_folder import CONFIG_FILENAME, TRAINING_RECORD_FILENAME

STUDY_NAME = "dogcat-tune"
TRIAL_FIELDS = ("number", "state", "val_loss", "val_accuracy", "seconds")
# Deleted from a trial's run folder once it is scored: weights nothing reads again (the shipped
# .keras file alone is 10 MB), written by every trial of a 30-trial search.
TRIAL_HEAVY_FILES = (MODEL_FILENAME, "best.weights.h5")


class TuneError(DogcatError, RuntimeError):
    pass


@dataclass(frozen=True)
class Param:
    """One searched config key (`section.key`, also its name in the study).

    `choices` makes it categorical, else it is an int or float in [low, high] (log-uniform with
    `log`, on a grid of `step` when set). `needs`, when set, names an int key that must be at least 2 for this one to matter:
    the parameter is only drawn then, and the config keeps its base value otherwise.
    """

    name: str
    low: float = 0
    high: float = 0
    log: bool = False
    kind: str = "float"  # "float", "int" or "categorical"
    choices: tuple[Any, ...] = ()
    needs: str | None = None
    step: float | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        on_grid = self.step is None or math.isclose((value - self.low) / self.step, round((value - self.low) / self.step))
        return self.low <= value <= self.high and on_grid


# What the seed leaves open ("Adam (learning rate tuned during experiments)", "10-20 epochs
# depending on training stability") and what dogcat added on top of it (cached views, batch
# size, how much of the top is fine-tuned). Early stopping (train.early_stopping_patience, from
# the base config) ends a trial before its epochs run out when val_loss stalls.
SPACE: tuple[Param, ...] = (
    Param("train.learning_rate", 1e-4, 3e-3, log=True),  # head-only phase
    Param("train.fine_tune_learning_rate", 1e-5, 1e-3, log=True),
    Param("train.epochs", 10, 20, kind="int"),
    Param("train.head_epochs", 1, 4, kind="int"),
    Param("train.batch_size", kind="categorical", choices=(16, 32, 64)),
    Param("model.fine_tune_blocks", 1, 3, kind="int"),
    Param("train.views", 1, 4, kind="int"),
    # View 0 is the photo as it is, so with one view there is no augmentation to tune. On a grid
    # (0, 0.05, 0.1, 0.15), so trials share their augmented views' activations (ACTIVATION_MEMO_BYTES).
    Param("model.rotation", 0.0, 0.15, step=0.05, needs="train.views"),
)
# Trunk activations kept across the trials of one process: a view (3,200 photos, about 100 MB at
# 224 px) computed for one trial serves every later trial with the same fine-tuned blocks (and,
# past view 0, the same rotation), so most trials skip most of the trunk pass.
ACTIVATION_MEMO_BYTES = 3 * 2**30


def default_out(config: Config) -> Path:
    return Path(config.train.output_dir) / datetime.now(UTC).strftime("tune-%Y%m%d-%H%M%S")


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """`base` with a trial's parameters set (keys are `section.key`), validated."""
    config = copy.deepcopy(base)
    for name, value in params.items():
        section, _, key = name.partition(".")
        setattr(getattr(config, section), key, value)
    validate_config(config)
    return config


def tune(
    config: Config, trials: int, out: str | Path | None = None, seed: int | None = None,
    space: tuple[Param, ...] = SPACE, log: Callable[[str], None] = print, progress: bool = True,
    memo_bytes: int = ACTIVATION_MEMO_BYTES,
) -> Path:
    """Run (or resume) a search until `out` holds `trials` finished trials; returns `out`.

    `seed` (default: `train.seed`) seeds the TPE sampler; every trial trains with the base
    config's `train.seed`, so trials differ only in their parameters. A fresh search's first trial
    is the base config itself when its values lie in `space`: the table then shows what the
    search has to beat, measured the same way. `memo_bytes` bounds the trunk activations kept
    between trials (0 keeps none).
    """
    import optuna  # missing: the command line names the tune extra (errors.MissingDependency)
    from optuna.trial import TrialState

    # Imports Keras: here, not when the CLI imports this module.
    from dogcat.features import ActivationMemo

    if trials < 1:
        raise TuneError(f"The search needs at least 1 trial. Received: trials={trials}")
    validate_config(config)
    seed = config.train.seed if seed is None else seed
    if not 0 <= seed <= 2**31 - 2:  # train.seed's range
        raise TuneError(f"The sampler seed must be in [0, 2**31 - 2]. Received: seed={seed}")
    out = Path(out) if out is not None else default_out(config)
    base_path = out / CONFIG_FILENAME
    if base_path.is_file():
        if load_config(base_path) != config:
            raise TuneError(f"{out} holds a search from a different base config; resume it without --config "
                            f"changes or pick a new --out. Received: out={str(out)!r}")
    else:
        write_text_atomic(base_path, config.to_toml())  # creates `out`

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)  # dogcat logs each trial itself; Ctrl-C needs no traceback
    try:
        study = optuna.create_study(
            study_name=STUDY_NAME, storage=f"sqlite:///{(out / 'study.db').resolve()}", load_if_exists=True,
            direction="minimize",
        )
        if study.user_attrs.get("seed", seed) != seed:
            raise TuneError(f"{out} holds a search with sampler seed {study.user_attrs['seed']}; resume it with "
                            f"that --seed or pick a new --out. Received: seed={seed}")
        study.set_user_attr("seed", seed)
        # Seeded by (seed, trials so far): a fresh search is reproducible, and a resumed one does
        # not replay the proposals its first session already tried.
        sampler_seed = int(np.random.default_rng([seed, len(study.trials)]).integers(2**31 - 1))
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed)
        if not study.trials:
            baseline = {p.name: _get(config, p.name) for p in space}
            if all(p.contains(baseline[p.name]) for p in space):
                study.enqueue_trial(_drawn(baseline, space), user_attrs={"baseline": True})
        _requeue_interrupted(study, TrialState, log)

        objective = _Objective(config, out, space, log, progress, ActivationMemo(memo_bytes) if memo_bytes > 0 else None)

        def after_trial(study, trial) -> None:
            _write_results(study, config, out, space)
            if trial.state == TrialState.COMPLETE:
                best = study.best_trial
                log(f"trial {trial.number}: val_loss {trial.value:.4f} val_acc {trial.user_attrs['val_accuracy']:.4f} "
                    f"{trial.user_attrs['seconds']:.0f}s; best so far trial {best.number} ({best.value:.4f})")
            else:
                log(f"trial {trial.number}: {trial.state.name.lower()}")

        done = _count(study, TrialState.COMPLETE)
        if done >= trials:
            log(f"{out} already holds {done} finished trials (asked for {trials})")
        try:
            while done < trials:
                log(f"{out}: {done} of {trials} trials finished; running {trials - done}")
                study.optimize(objective, n_trials=trials - done, callbacks=[after_trial])
                finished_now = _count(study, TrialState.COMPLETE)
                if finished_now == done:  # every trial of the pass failed (a NaN loss): do not loop forever
                    raise TuneError(f"No trial of the last {trials - done} finished; see trials.csv. "
                                    f"Received: out={str(out)!r}")
                done = finished_now
        finally:
            _write_results(study, config, out, space)
    finally:
        optuna.logging.set_verbosity(verbosity)
    best = study.best_trial
    log(f"best: trial {best.number}, val_loss {best.value:.4f}; config {out / 'best.toml'}")
    return out


class _Objective:
    """One trial: the trial's config trained in its run folder, scored on validation log loss."""

    def __init__(self, base: Config, out: Path, space: tuple[Param, ...], log: Callable[[str], None], progress: bool,
                 memo: MutableMapping | None):
        self.base, self.out, self.space, self.log, self.progress, self.memo = base, out, space, log, progress, memo

    def __call__(self, trial) -> float:
        from dogcat.train import train

        params = _suggest(trial, self.space)
        config = trial_config(self.base, params)
        # A retried trial keeps the folder of the trial it replaces, so `train` resumes it.
        folder = trial.user_attrs.get("run_dir", f"trials/{trial.number:04d}")
        trial.set_user_attr("run_dir", folder)  # set last: from here on the parameters are complete
        run_dir = self.out / folder
        self.log(f"trial {trial.number}: " + " ".join(f"{k}={_shown(v)}" for k, v in params.items()))
        started = time.perf_counter()
        try:
            if not _finished(run_dir):  # a trial cut short after its training finished is only scored
                train(config, run_dir, log=lambda line: self._log_train(trial.number, line),
                      progress=self.progress, deployable=False, activation_memo=self.memo)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        metrics = json.loads((run_dir / TRAINING_RECORD_FILENAME).read_text(encoding="utf-8"))
        calibration = metrics.get("calibration")
        val_loss = calibration["val_loss_after"] if calibration else metrics["val_loss"]
        trial.set_user_attr("val_accuracy", metrics["val_accuracy"])
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        for name in TRIAL_HEAVY_FILES:
            (run_dir / name).unlink(missing_ok=True)
        return float(val_loss)


    def _log_train(self, number: int, line: str) -> None:
        if not line.startswith("model: "):  # a trial's model file is deleted once it is scored
            self.log(f"trial {number}: {line}")


def _suggest(trial, space: tuple[Param, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for param in space:
        if param.needs is None or params.get(param.needs, 0) >= 2:
            params[param.name] = param.suggest(trial)
    return params


def _drawn(values: dict[str, Any], space: tuple[Param, ...]) -> dict[str, Any]:
    """`values` less the parameters `_suggest` would not draw (a `needs` key under 2)."""
    return {p.name: values[p.name] for p in space if p.needs is None or values.get(p.needs, 0) >= 2}


def _requeue_interrupted(study, TrialState, log: Callable[[str], None]) -> None:
    """Fail the trials a dead process left RUNNING, and queue each interrupted trial once more."""
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for trial in study.trials:
        interrupted = trial.user_attrs.get("interrupted", False)
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
            interrupted = True
        # Without `run_dir` the trial stopped while drawing its parameters: nothing to resume.
        if interrupted and trial.number not in retried and "run_dir" in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number,
                                                          "run_dir": trial.user_attrs["run_dir"]})
            log(f"trial {trial.number} was interrupted; queued again with the same parameters")


def _write_results(study, base: Config, out: Path, space: tuple[Param, ...]) -> None:
    """trials.csv (one row per finished trial) and best.toml, rewritten from the study after each trial."""
    from optuna.trial import TrialState

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*TRIAL_FIELDS, *(p.name for p in space), "run_dir", "note"])
    for trial in study.trials:
        if not trial.state.is_finished():
            continue
        attrs = trial.user_attrs
        writer.writerow([
            trial.number, trial.state.name, "" if trial.value is None else trial.value,
            attrs.get("val_accuracy", ""), attrs.get("seconds", ""),
            *(trial.params.get(p.name, "") for p in space), attrs.get("run_dir", ""), _note(attrs),
        ])
    write_text_atomic(out / "trials.csv", buffer.getvalue())
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and not math.isnan(t.value)]
    if not complete:
        return
    best = min(complete, key=lambda t: t.value)
    header = (
        f"# dogcat tune: trial {best.number}, the best of {len(complete)} finished trials in {out}:\n"
        f"# validation log loss {best.value:.4f}{' (calibrated)' if base.train.calibrate else ''}, "
        f"accuracy {best.user_attrs['val_accuracy']:.4f}.\n"
        "# The validation photos chose it: adopt it only once benchmarks/seeds.py shows it beating the\n"
        "# current recipe across seeds on the test split and the photos outside the dataset.\n\n"
    )
    write_text_atomic(out / "best.toml", header + trial_config(base, best.params).to_toml())


def _note(attrs: dict[str, Any]) -> str:
    if attrs.get("baseline"):
        return "the base config"
    if "retry_of" in attrs:
        return f"retry of trial {attrs['retry_of']}"
    return "interrupted" if attrs.get("interrupted") else ""


def _finished(run_dir: Path) -> bool:
    state = run_dir / "state.json"
    return state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("finished", False)


def _count(study, state) -> int:
    return sum(t.state == state for t in study.trials)


def _get(config: Config, name: str) -> Any:
    section, _, key = name.partition(".")
    return getattr(getattr(config, section), key)


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
