"""Does reduced precision speed up fine-tuning on this CPU? float32 vs mixed bfloat16 / float16.

    python benchmarks/precision.py [--steps 6]

One process per Keras dtype policy (it is global), each timing `train_on_batch` of the default
model (ImageNet MobileNetV2, block 16 unfrozen) on a batch of 32 at 224 px: median of --steps
steps after 2 warm-up steps. float32, the trainer's setting, is the baseline. TensorFlow backend.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import fine_tune_step_seconds, write_section  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def worker(policy: str, steps: int) -> float:
    import keras

    keras.mixed_precision.set_global_policy(policy)
    return fine_tune_step_seconds(steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--worker", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    seconds = {}
    for policy in POLICIES:
        output = subprocess.run([sys.executable, __file__, "--worker", policy, "--steps", str(args.steps)],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout
        seconds[policy] = json.loads(output.strip().splitlines()[-1])
    rows = [(p, f"{seconds[p]:.3f} s", f"{seconds[p] / seconds['float32']:.2f}") for p in POLICIES]
    table = "| dtype policy | fine-tune step, batch 32 at 224 px (median) | time / float32 |\n|---|---|---|\n"
    table += "\n".join(f"| {' | '.join(row)} |" for row in rows)
    print(table)
    faster = [p for p in POLICIES[1:] if seconds[p] < seconds["float32"]]
    verdict = (f"Faster than float32 here: {', '.join(faster)}." if faster
               else "Neither reduced precision is faster than float32 here.")
    write_section("Precision: float32 vs mixed bfloat16 / float16", f"python benchmarks/precision.py --steps {args.steps}",
                  f"{verdict}\n\n{table}", ("keras", "tensorflow-cpu"))


if __name__ == "__main__":
    main()
