"""What the main job's set-up command costs: `pip install` time and installed size, before and after.

    python benchmarks/install_footprint.py [--runs 1]

Each variant gets a fresh virtual environment (plain venv + pip, as the README's set-up command
uses) installed from this checkout, with pip's cache off so every run downloads what it needs;
both are measured in the same run, one after the other. Before: `.[tensorflow,streamlit]` (the old
command). After: `.[streamlit]`, which is all that serving the shipped model needs (ONNX Runtime;
TensorFlow is for training). The after environment then loads the app's classifier with
TensorFlow made unimportable, to show it serves.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

VARIANTS = (("before: .[tensorflow,streamlit]", ".[tensorflow,streamlit]"), ("after: .[streamlit]", ".[streamlit]"))
PROBE = ("import sys; sys.modules.update(tensorflow=None, keras=None); from dogcat.inference import Classifier; "
         "c = Classifier.from_path(); print(c.runtime, c.predict(['demos/examples/rocket.jpg'])[0].verdict)")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(extras: str, folder: Path) -> tuple[float, int, str]:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    started = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", f"{REPO}{extras[1:]}"],
                   check=True, cwd=REPO)
    seconds = time.perf_counter() - started
    probe = subprocess.run([str(python), "-c", PROBE], cwd=REPO, capture_output=True, text=True)
    return seconds, folder_bytes(folder), (probe.stdout.strip() or probe.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dogcat-install-") as scratch:
        for run in range(args.runs):
            for name, extras in VARIANTS:
                seconds, size, probe = measure(extras, Path(scratch) / f"{run}-{len(rows)}")
                rows.append(f"| {name} | {seconds:.0f} s | {size / 2**20:,.0f} MiB | `{probe}` |")
                print(rows[-1], flush=True)
    body = "\n".join([
        "Fresh venv + `pip install --no-cache-dir` from this checkout, both variants in one run; the last column "
        "loads the shipped model with TensorFlow and Keras made unimportable and classifies the rocket.",
        "", "| command | pip install | installed | serves without TensorFlow |", "|---|---|---|---|", *rows,
    ])
    write_section("Install footprint of the main job's command", "python benchmarks/install_footprint.py", body, ("pip",))
    print(body)


if __name__ == "__main__":
    main()
