"""Cold start of the command: `dogcat predict one.jpg` against the library doing the same.

    python benchmarks/cold_start.py [--repeats 7] [--photo demos/examples/cat-chelsea.jpg]

Each run is a fresh process, timed from start to exit, with its peak resident memory
(ru_maxrss of the child). The two commands alternate, so drift in the machine's load hits both
alike; the medians are compared. Target: the command within 2x of the library in both.
Also measured once each, for the record: the command before its imports were made lazy, which imported Keras (and
so TensorFlow) for every command, approximated by importing Keras before `main()`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402


def commands(photo: str) -> dict[str, list[str]]:
    library = f"from dogcat.inference import Classifier; Classifier.from_path().predict([{photo!r}])"
    return {
        "`dogcat predict one.jpg`": [sys.executable, "-m", "dogcat.cli", "predict", photo],
        "library: `Classifier.from_path().predict([...])`": [sys.executable, "-c", library],
        "before #15: Keras imported first, then `dogcat predict`": [
            sys.executable, "-c", f"import keras; from dogcat.cli import main; main(['predict', {photo!r}])"],
    }


def run_once(command: list[str]) -> tuple[float, float]:
    """(seconds from start to exit, peak RSS in MiB) of one fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOGCAT_MODEL", "DOGCAT_RUNTIME")}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command} failed ({process.returncode}): {process.stderr.read().decode()}")
    process.stderr.close()
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--photo", default="demos/examples/cat-chelsea.jpg")
    args = parser.parse_args()

    load = os.getloadavg()[0]  # shared machines: say how busy it was
    cases = commands(args.photo)
    cli, library, before = cases
    for command in cases.values():  # warm the page cache, so no case pays for the first disk read
        run_once(command)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name in (cli, library):
            results[name].append(run_once(cases[name]))
    results[before] = [run_once(cases[before]) for _ in range(max(1, args.repeats // 3))]

    def medians(name: str) -> tuple[float, float]:
        return statistics.median(t for t, _ in results[name]), statistics.median(m for _, m in results[name])

    base_s, base_mib = medians(library)
    rows = ["| process | runs | median time | median peak RSS | vs library (time, memory) |", "|---|---|---|---|---|"]
    for name in cases:
        seconds, mib = medians(name)
        rows.append(f"| {name} | {len(results[name])} | {seconds:.2f} s | {mib:.0f} MiB | "
                    f"{seconds / base_s:.2f}x, {mib / base_mib:.2f}x |")
    cli_s, cli_mib = medians(cli)
    verdict = "met" if cli_s <= 2 * base_s and cli_mib <= 2 * base_mib else "NOT met"
    body = "\n".join([
        f"One photo (`{args.photo}`), the shipped model, which the ONNX twin serves; each run a fresh process, "
        f"from start to exit; the command and the library alternate. Load average at start: {load:.1f}.", "", *rows, "",
        f"Target (within 2x of the library in time and memory): {verdict}. The command no longer imports "
        "Keras when ONNX serves; the 'before' row is what it cost when it did.",
    ])
    print(body)
    write_section("Cold start: `dogcat predict` vs the library", "python benchmarks/cold_start.py", body,
                  ("onnxruntime", "keras", "tensorflow"))


if __name__ == "__main__":
    main()
