"""`dogcat tune`: a real 2-trial search on tiny data whose best.toml trains, and the search's
bookkeeping (resume, interrupted trials, seeding, the CLI) with a stand-in for `train`."""

import csv
import json
import math
import sys

import pytest

from dogcat.cli import main
from dogcat.config import load_config
from dogcat.tune import SPACE, STUDY_NAME, TuneError, trial_config, tune
from tests.helpers import TINY_SIZE

pytestmark = [pytest.mark.tune, pytest.mark.slow]


def _base(data_dir, *extra):
    return load_config(None, [
        f'data.dir="{data_dir}"', f"data.image_size={TINY_SIZE}", "model.weights=none", "model.dense_units=8", *extra,
    ])


def _rows(out):
    with (out / "trials.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _study(out):
    import optuna  # here, not at the top: `nox -s tests` collects this file without Optuna installed

    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")


def _params(row):
    return {p.name: row[p.name] for p in SPACE}


@pytest.fixture
def fake_train(monkeypatch):
    """Stands in for dogcat.train.train: writes what a finished run writes, with a loss that
    depends on the parameters; records (run folder name, config) per call. Set `interrupt_on` to
    the call number (1-based) that raises KeyboardInterrupt, as Ctrl-C in the middle of a trial would."""

    class Fake:
        def __init__(self):
            self.calls, self.interrupt_on = [], None

        def __call__(self, config, run_dir, log=print, progress=True, deployable=True, activation_memo=None):
            self.calls.append((run_dir.name, config))
            if len(self.calls) == self.interrupt_on:
                raise KeyboardInterrupt
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.toml").write_text(config.to_toml())
            loss = abs(math.log10(config.train.learning_rate) + 3) + config.train.views / 100
            (run_dir / "training.json").write_text(json.dumps({"val_loss": loss, "val_accuracy": 0.9, "calibration": None}))
            (run_dir / "state.json").write_text(json.dumps({"finished": True}))
            return run_dir

    fake = Fake()
    monkeypatch.setattr("dogcat.train.train", fake)
    return fake


def test_search_writes_one_row_per_trial_and_a_best_config_that_trains(tmp_path, tiny_dataset, varied_base_weights):
    # A varied base (weights=none gives every photo [0.5, 0.5]), so trials differ in val loss.
    base = _base(tiny_dataset, f'model.weights="{varied_base_weights}"', "train.early_stopping_patience=1")
    lines = []
    out = tune(base, 2, tmp_path / "search", log=lines.append, progress=False)

    rows = _rows(out)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]
    assert rows[0]["note"] == "the base config"  # trial 0 is the recipe the search must beat
    study = _study(out)
    assert trial_config(base, study.trials[0].params) == base
    for row, trial in zip(rows, study.trials, strict=True):
        run = out / row["run_dir"]
        metrics = json.loads((run / "training.json").read_text())
        assert float(row["val_loss"]) == pytest.approx(metrics["calibration"]["val_loss_after"])
        assert float(row["val_accuracy"]) == metrics["val_accuracy"]
        assert float(row["seconds"]) > 0
        # Each trial trained its own parameters; only what tuning reads is kept.
        assert load_config(run / "config.toml") == trial_config(base, trial.params)
        assert not {"dog_cat_classifier.keras", "best.weights.h5", "dog_cat_classifier.onnx",
                    "dog_cat_detector.npz"} & {p.name for p in run.iterdir()}
    # Trial 1 borrows trial 0's cached views when both fine-tune as many blocks (they do, with seed 42).
    cached = next(line for line in lines if line.startswith("trial 1: cached the frozen trunk's output"))
    same_blocks = rows[0]["model.fine_tune_blocks"] == rows[1]["model.fine_tune_blocks"]
    assert ("reused)" in cached) == same_blocks

    best_row = min(rows, key=lambda row: float(row["val_loss"]))
    best = load_config(out / "best.toml")
    assert best == load_config(out / best_row["run_dir"] / "config.toml")
    assert load_config(out / "config.toml") == base

    # `dogcat train --config best.toml`, as it is.
    assert main(["train", "--config", str(out / "best.toml"), "--run-dir", str(tmp_path / "adopted")]) == 0
    assert load_config(tmp_path / "adopted" / "config.toml") == best
    assert (tmp_path / "adopted" / "dog_cat_classifier.onnx").is_file()


def test_resumed_search_runs_only_the_missing_trials(tmp_path, tiny_dataset, fake_train):
    base = _base(tiny_dataset)
    out = tmp_path / "search"
    tune(base, 2, out, log=lambda _: None)
    tune(base, 3, out, log=lambda _: None)
    assert [name for name, _ in fake_train.calls] == ["0000", "0001", "0002"]
    tune(base, 3, out, log=lambda _: None)  # nothing left to do
    assert len(fake_train.calls) == 3
    rows = _rows(out)
    assert [(row["number"], row["state"]) for row in rows] == [(str(n), "COMPLETE") for n in range(3)]
    # The resumed session draws anew: it does not replay what the first session's sampler proposed.
    assert len({tuple(_params(row).items()) for row in rows}) == 3


def test_interrupted_trial_is_retried_with_its_parameters_and_finished_ones_are_not(tmp_path, tiny_dataset, fake_train):
    base = _base(tiny_dataset)
    out = tmp_path / "search"
    fake_train.interrupt_on = 2  # Ctrl-C during trial 1
    with pytest.raises(KeyboardInterrupt):
        tune(base, 3, out, log=lambda _: None)
    assert _rows(out)[1]["state"] == "FAIL"

    tune(base, 3, out, log=lambda _: None)
    names = [name for name, _ in fake_train.calls]
    assert names == ["0000", "0001", "0001", "0003"]  # trial 2 reruns trial 1 in its folder; trial 0 never again
    assert fake_train.calls[2][1] == fake_train.calls[1][1]
    rows = _rows(out)
    assert [(row["number"], row["state"], row["note"]) for row in rows] == [
        ("0", "COMPLETE", "the base config"), ("1", "FAIL", "interrupted"), ("2", "COMPLETE", "retry of trial 1"),
        ("3", "COMPLETE", ""),
    ]
    assert _params(rows[2]) == _params(rows[1])
    assert sum(row["state"] == "COMPLETE" for row in rows) == 3


def test_trial_left_running_by_a_killed_process_is_failed_and_retried(tmp_path, tiny_dataset, fake_train):
    from dogcat.tune import _suggest

    base = _base(tiny_dataset)
    out = tmp_path / "search"
    tune(base, 1, out, log=lambda _: None)
    # What a process killed mid-trial leaves behind: a RUNNING trial with its parameters drawn.
    study = _study(out)
    killed = study.ask()
    params = _suggest(killed, SPACE)
    killed.set_user_attr("run_dir", "trials/0001")

    tune(base, 2, out, log=lambda _: None)
    assert [name for name, _ in fake_train.calls] == ["0000", "0001"]
    assert fake_train.calls[1][1] == trial_config(base, params)
    rows = _rows(out)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "COMPLETE"), ("1", "FAIL"), ("2", "COMPLETE")]
    assert rows[2]["note"] == "retry of trial 1"


def test_same_seed_proposes_the_same_trials(tmp_path, tiny_dataset, fake_train):
    base = _base(tiny_dataset)
    searches = [tune(base, 3, tmp_path / name, seed=seed, log=lambda _: None)
                for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    a, b, c = ([_params(row) for row in _rows(out)] for out in searches)
    assert a == b
    assert a[0] == c[0]  # the base config, whatever the seed
    assert a[1:] != c[1:]


def test_resuming_with_another_base_config_or_seed_is_refused(tmp_path, tiny_dataset, fake_train):
    base = _base(tiny_dataset)
    out = tmp_path / "search"
    tune(base, 1, out, log=lambda _: None)
    with pytest.raises(TuneError, match="different base config"):
        tune(_base(tiny_dataset, "train.early_stopping_patience=5"), 2, out, log=lambda _: None)
    with pytest.raises(TuneError, match=r"Received: seed=3$"):
        tune(base, 2, out, seed=3, log=lambda _: None)
    assert len(fake_train.calls) == 1


def test_cli_runs_resumes_and_reports_interruption(tmp_path, tiny_dataset, fake_train, capsys):
    config = tmp_path / "base.toml"
    config.write_text(_base(tiny_dataset).to_toml())
    out = tmp_path / "search"
    assert main(["tune", "--config", str(config), "--trials", "1", "--out", str(out)]) == 0
    fake_train.interrupt_on = 2
    assert main(["tune", "--trials", "2", "--out", str(out)]) == 130  # the folder's own base config
    assert f"run the same command with --out {out} to resume" in capsys.readouterr().err
    assert main(["tune", "--trials", "2", "--out", str(out)]) == 0
    assert sum(row["state"] == "COMPLETE" for row in _rows(out)) == 2
    assert main(["tune", "--config", str(config), "--trials", "2", "--out", str(out), "train.epochs=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("dogcat: error: ")
    assert error.endswith(f"Received: out={str(out)!r}")
    assert main(["tune", "--trials", "0", "--out", str(tmp_path / "none")]) == 2
    assert main(["tune", "--config", str(config), "--seed", "-1", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith("Received: seed=-1")


def test_without_optuna_the_error_says_what_to_install(tmp_path, tiny_dataset, monkeypatch, capsys):
    """The library raises the import error; the command line turns it into one line naming the tune extra."""
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ModuleNotFoundError):
        tune(_base(tiny_dataset), 1, tmp_path / "search")
    config = tmp_path / "base.toml"
    config.write_text(_base(tiny_dataset).to_toml())
    assert main(["tune", "--config", str(config), "--out", str(tmp_path / "search")]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "dogcat-verdict[tune]"' in err
    assert "\n" not in err
    assert err.endswith("Received: missing='optuna'")


def test_trials_share_cached_views_and_train_as_without_them(tmp_path, tiny_dataset, varied_base_weights):
    from dogcat.features import ActivationMemo
    from dogcat.train import train

    def run(name, rotation, memo, seed=0):
        config = _base(tiny_dataset, f'model.weights="{varied_base_weights}"', "train.epochs=2", "train.head_epochs=1",
                       "train.batch_size=8", f"model.rotation={rotation}", f"train.seed={seed}")
        lines = []
        folder = train(config, tmp_path / name, log=lines.append, progress=False, deployable=False, activation_memo=memo)
        cached = next(line for line in lines if line.startswith("cached the frozen trunk's output"))
        return (folder / "history.csv").read_text().splitlines(), cached

    memo = ActivationMemo(2**30)
    first, cached = run("first", 0.05, memo)
    assert "reused" not in cached
    again, cached = run("again", 0.05, memo)
    assert cached.endswith(", 2 reused)")
    assert [row.split(",")[:6] for row in again] == [row.split(",")[:6] for row in first]  # all but the seconds
    rotated, cached = run("rotated", 0.1, memo)  # view 0 is shared; view 1 is drawn with the new rotation
    assert cached.endswith(", 1 reused)")
    alone, _ = run("alone", 0.1, None)
    assert [row.split(",")[:6] for row in rotated] == [row.split(",")[:6] for row in alone]
    assert [row.split(",")[:6] for row in rotated] != [row.split(",")[:6] for row in first]
    # Another seed draws other augmented views: it shares only view 0 (and val), as seeds.py's runs do.
    reseeded, cached = run("reseeded", 0.1, memo, seed=1)
    assert cached.endswith(", 1 reused)")
    reseeded_alone, _ = run("reseeded-alone", 0.1, None, seed=1)
    assert [row.split(",")[:6] for row in reseeded] == [row.split(",")[:6] for row in reseeded_alone]


def test_memo_forgets_the_least_recently_used_views_past_its_budget():
    import numpy as np

    from dogcat.features import ActivationMemo

    memo = ActivationMemo(3 * 400)  # three 100-float32 arrays
    for key in "abc":
        memo[key] = np.zeros(100, dtype=np.float32)
    memo["a"]  # a read makes "a" the most recently used
    memo["d"] = np.zeros(100, dtype=np.float32)
    assert list(memo) == ["c", "a", "d"]
