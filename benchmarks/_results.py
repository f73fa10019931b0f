"""Shared by the benchmark scripts: machine description and RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is rewritten by the script named in it; numbers are from one run on the machine it names.\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def versions(*packages: str) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def write_section(name: str, command: str, body: str, packages: tuple[str, ...] = ()) -> None:
    """Replace (or append) the section `name` in RESULTS.md with a dated, attributed body."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- section:{name} -->\n## {name}\n\n"
        f"- date: {stamp}\n- machine: {machine()}\n"
        + (f"- versions: {versions(*packages)}\n" if packages else "")
        + f"- command: `{command}`\n\n{body.strip()}\n<!-- /section:{name} -->\n"
    )
    text = RESULTS.read_text() if RESULTS.is_file() else HEADER
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def fine_tune_step_seconds(steps: int) -> float:
    """Median `train_on_batch` time of the default model (block 16 unfrozen), batch 32 at 224 px.

    Two untimed warm-up steps first (tracing). Uses whatever Keras backend and dtype policy the
    calling process has set.
    """
    import time

    import keras
    import numpy as np

    from dogcat.config import ModelConfig
    from dogcat.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(), 224, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).random((32, 224, 224, 3), dtype=np.float32)
    labels = np.arange(32) % 2
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        model.train_on_batch(images, labels)
        if step >= 2:
            times.append(time.perf_counter() - started)
    return float(np.median(times))
