"""Accuracy across training seeds: how much of a recipe's score is the recipe and how much is luck.

    python benchmarks/seeds.py [--seeds 42 1 2 3 4] [--variant "LABEL:[--config FILE] KEY=VALUE ..."] [--source KAGGLE_TRAIN_DIR]

One 400-image test split moves by 0.25 points per photo, and one training run by about as much
from its seed alone, so a single run cannot say whether a recipe reaches a target or whether one
recipe beats another. This trains each variant (default: configs/default.toml as is) once per
seed, exports it, and scores it through `Classifier.predict` on the test split and on the Kaggle
photos outside the dataset (as benchmarks/accuracy.py does), then reports mean and spread.
A variant may name its own config file first, e.g. the `best.toml` of a `dogcat tune` search:
`--variant "recipe:" --variant "tuned:--config runs/tune-X/best.toml"` scores both on the same seeds.
Each run took 1.5-2 minutes (the recipe) to 3.5 (3 blocks, batch 16) on 2 cores; runs share the trunk activations they can (view 0 across seeds).
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
    """(label, tokens): the tokens are KEY=VALUE overrides, optionally after `--config FILE`.

    The file is checked here, so a typo stops the benchmark before hours of training, not after.
    """
    label, _, rest = text.partition(":")
    tokens = rest.split()
    if not label.strip():
        raise argparse.ArgumentTypeError(f"a variant is 'LABEL:[--config FILE] KEY=VALUE ...'. Received: variant={text!r}")
    if "--config" in tokens[1:] or tokens == ["--config"]:
        raise argparse.ArgumentTypeError(f"a variant's --config comes first, followed by a file. Received: variant={text!r}")
    if tokens[:1] == ["--config"] and not Path(tokens[1]).is_file():
        raise argparse.ArgumentTypeError(f"a variant's config file does not exist. Received: variant={text!r}")
    return label.strip(), tokens


def variant_config(tokens: list[str], default: Path) -> tuple[Path, list[str]]:
    """(config file, overrides) of a variant: its own `--config FILE`, else `default`."""
    if tokens[:1] == ["--config"]:
        return Path(tokens[1]), tokens[2:]
    return default, tokens


def main() -> None:
    from dogcat.artifacts import MODEL_FILENAME
    from dogcat.config import load_config
    from dogcat.evaluate import evaluate, score_files
    from dogcat.export import export_onnx
    from dogcat.features import ActivationMemo
    from dogcat.inference import Classifier
    from dogcat.train import train

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help="LABEL:[--config FILE] KEY=VALUE ... a config file (default: --config) and overrides "
                             "(repeatable; default: --config as is)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle folder the dataset was prepared from (default: $DOGCAT_SHARED_DATA)")
    args = parser.parse_args()
    if args.source is None or not args.source.is_dir():
        parser.error(f"--source must be the Kaggle training folder. Received: source={args.source}")
    variants = args.variant or [("default recipe", [])]

    rows, summaries = [], []
    # View 0 (each photo as it is) is the same for every seed, and a variant that changes only the
    # head or the learning rates shares the recipe's augmented views too: computed once, not per run.
    memo = ActivationMemo(3 * 2**30)
    for label, tokens in variants:
        config_path, overrides = variant_config(tokens, args.config)
        scores = []
        for seed in args.seeds:
            config = load_config(config_path, [*overrides, f"train.seed={seed}"])
            outside = outside_photos(args.source, Path(config.data.dir))
            with tempfile.TemporaryDirectory() as tmp:
                # Labels and probabilities only: the "neither" detector is not fitted (deployable=False).
                run_dir = train(config, Path(tmp) / "run", log=lambda line: None, progress=False, deployable=False,
                                activation_memo=memo)
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
            f"| {label} | {' '.join(tokens) or '(none)'} | {len(scores)} | {spread([t['accuracy'] for t in tests])} | "
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
        f' --variant "{label}:{" ".join(tokens)}"' for label, tokens in (args.variant or []))
    write_section("Accuracy across training seeds", command, body, ("keras", "tensorflow-cpu", "onnxruntime"))


if __name__ == "__main__":
    main()
