"""Accuracy across training seeds: how much of a recipe's score is the recipe and how much is luck.

    python benchmarks/seeds.py [--seeds 42 1 2 3 4] [--variant "LABEL:KEY=VALUE ..."] [--source KAGGLE_TRAIN_DIR]

One 400-image test split moves by 0.25 points per photo, and one training run by about as much
from its seed alone, so a single run cannot say whether a recipe reaches a target or whether one
recipe beats another. This trains each variant (default: configs/default.toml as is) once per
seed, exports it, and scores it through `Classifier.predict` on the test split and on the Kaggle
photos outside the dataset (as benchmarks/accuracy.py does), then reports mean and spread.
Each run takes about 4-5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from benchmarks.accuracy import outside_photos  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    label, _, overrides = text.partition(":")
    if not label.strip():
        raise argparse.ArgumentTypeError(f"a variant is 'LABEL:KEY=VALUE ...'. Received: variant={text!r}")
    return label.strip(), overrides.split()


def main() -> None:
    from dogcat.artifacts import MODEL_FILENAME
    from dogcat.config import load_config
    from dogcat.evaluate import evaluate, score_files
    from dogcat.export import export_onnx
    from dogcat.inference import Classifier
    from dogcat.train import train

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help="LABEL:KEY=VALUE ... config overrides (repeatable; default: the config as is)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle folder the dataset was prepared from (default: $DOGCAT_SHARED_DATA)")
    args = parser.parse_args()
    if args.source is None or not args.source.is_dir():
        parser.error(f"--source must be the Kaggle training folder. Received: source={args.source}")
    variants = args.variant or [("default recipe", [])]

    rows, summaries = [], []
    for label, overrides in variants:
        scores = []
        for seed in args.seeds:
            config = load_config(args.config, [*overrides, f"train.seed={seed}"])
            outside = outside_photos(args.source, Path(config.data.dir))
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = train(config, Path(tmp) / "run", log=lambda line: None, progress=False)
                export_onnx(run_dir / MODEL_FILENAME)
                classifier = Classifier.from_path(run_dir / MODEL_FILENAME, runtime="onnx")
                test, extra = evaluate(classifier, config.data.dir, "test"), score_files(classifier, *outside)
            scores.append((test, extra))
            row = (f"| {label} | {seed} | {test['accuracy']:.4f} | {test['log_loss']:.4f} | "
                   f"{extra['accuracy']:.4f} | {extra['log_loss']:.4f} |")
            print(row, flush=True)
            rows.append(row)

        def spread(values: list[float]) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            return f"{statistics.mean(values):.4f} ± {sd:.4f}"

        tests, extras = [t for t, _ in scores], [e for _, e in scores]
        reaching = sum(t["accuracy"] >= 0.99 and t["log_loss"] <= 0.035 for t in tests)
        summaries.append(
            f"| {label} | {' '.join(overrides) or '(none)'} | {len(scores)} | {spread([t['accuracy'] for t in tests])} | "
            f"{spread([t['log_loss'] for t in tests])} | {spread([e['accuracy'] for e in extras])} | "
            f"{spread([e['log_loss'] for e in extras])} | {reaching} of {len(tests)} |"
        )

    body = "\n".join([
        f"Test split: {tests[0]['count']:,} photos; outside: the {extras[0]['count']:,} Kaggle photos `dogcat data prepare` did not pick. "
        "Each run trained, calibrated and exported as `dogcat train` + `dogcat export` do; scored on ONNX Runtime.",
        "",
        "| variant | overrides | runs | test accuracy (mean ± sd) | test log loss | outside accuracy | outside log loss "
        "| runs at ≥0.99 and ≤0.035 on test |",
        "|---|---|---|---|---|---|---|---|",
        *summaries,
        "",
        "| variant | seed | test accuracy | test log loss | outside accuracy | outside log loss |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    command = "python benchmarks/seeds.py --seeds " + " ".join(map(str, args.seeds)) + "".join(
        f' --variant "{label}:{" ".join(overrides)}"' for label, overrides in (args.variant or []))
    write_section("Accuracy across training seeds", command, body, ("keras", "tensorflow-cpu", "onnxruntime"))


if __name__ == "__main__":
    main()
