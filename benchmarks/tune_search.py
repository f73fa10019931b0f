"""The `dogcat tune` search itself: how long its trials take here, and which of them won.

    python benchmarks/tune_search.py [--config configs/default.toml] [--trials 30] [--out runs/tune-30]

Runs `dogcat tune` into `--out`, or resumes it: a folder that already holds the trials is only
read, so the section can be written from a search that ran before (its dates are in the table).
Records the search's wall time (the first trial's start to the last one's end, as the Optuna
study stores them), the trials' own seconds, and the best trials by validation log loss beside
trial 0, the base config measured the same way. 400 validation photos pick the winner, so its
score flatters it: benchmarks/seeds.py decides whether it is adopted (README, "Tuning").
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

SHOWN = 5  # best trials in the table


def main() -> None:
    import optuna

    from dogcat.config import load_config
    from dogcat.tune import SPACE, STUDY_NAME, tune

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "tune-30")
    parser.add_argument("--note", default="", help="said under the table, e.g. what else ran on the machine meanwhile")
    args = parser.parse_args()

    base = load_config(args.config)
    if (args.out / "config.toml").is_file():
        base = load_config(args.out / "config.toml")  # a resumed search keeps its own base config
    tune(base, args.trials, args.out, progress=False)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{(args.out / 'study.db').resolve()}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    started = min(t.datetime_start for t in study.trials)
    ended = max(t.datetime_complete for t in study.trials if t.datetime_complete)
    seconds = [t.user_attrs["seconds"] for t in complete]
    ranked = sorted(complete, key=lambda t: t.value)
    shown = ranked[:SHOWN] + [t for t in ranked[SHOWN:] if t.user_attrs.get("baseline")]
    names = [p.name for p in SPACE]

    def row(trial) -> str:
        note = " (base config)" if trial.user_attrs.get("baseline") else ""
        values = [_shown(trial.params[name]) if name in trial.params else "-" for name in names]
        return (f"| {ranked.index(trial) + 1} | {trial.number}{note} | {trial.value:.4f} | "
                f"{trial.user_attrs['val_accuracy']:.4f} | {trial.user_attrs['seconds']:.0f} | " + " | ".join(values) + " |")

    body = "\n".join([
        f"Search folder `{args.out.name}`: {len(complete)} finished trials of {len(study.trials)}, "
        f"run {started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC. Base config: `{args.config.name}`, train.seed "
        f"{base.train.seed} for every trial; TPE sampler seeded with {study.user_attrs.get('seed')}.",
        "",
        "| | value |",
        "|---|---|",
        f"| wall time, first trial's start to last trial's end | {(ended - started).total_seconds() / 60:.0f} min |",
        f"| trial seconds, sum | {sum(seconds) / 60:.0f} min |",
        f"| trial seconds, median (min, max) | {statistics.median(seconds):.0f} s ({min(seconds):.0f}, {max(seconds):.0f}) |",
        "",
        "Best trials by validation log loss (calibrated, 400 photos), and the base config:",
        "",
        "| rank | trial | val log loss | val accuracy | seconds | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|" + "---|" * (5 + len(names)),
        *(row(t) for t in shown),
        *(["", args.note] if args.note else []),
    ])
    print(body)
    write_section("Tuning: the dogcat tune search", f"python benchmarks/tune_search.py --trials {args.trials} "
                  f"--out {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}",
                  body, ("keras", "tensorflow-cpu", "optuna"))


def _shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
