"""Shared by the benchmark scripts: machine description and RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\nEach section is rewritten by the script named in it; numbers are from one run on the machine it names.\n"
    "The speed probe (a fixed float32 matmul's GFLOP/s at the script's start and end) tells runs on different\n"
    "or busier machines apart; sections without one predate it.\n"
)


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


PROBE_SIZE, PROBE_REPEATS = 1024, 5


def speed_probe() -> float:
    """GFLOP/s of a fixed float32 NumPy matmul (1024x1024 by 1024x1024, BLAS on all cores), best of 5.

    About 0.1-0.3 s. A quick fingerprint of how fast the machine was at that moment, so that sections
    written on different (or differently loaded) machines can be told apart.
    """
    import time

    rng = np.random.default_rng(0)
    a, b = (rng.random((PROBE_SIZE, PROBE_SIZE), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * PROBE_SIZE**3 / best / 1e9


# Measured when a benchmark script imports this module, i.e. at its start, before its own work
# loads the machine; write_section records it with a second probe taken at the end.
START_PROBE = speed_probe()


def versions(*packages: str) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def write_section(name: str, command: str, body: str, packages: tuple[str, ...] = ()) -> None:
    """Replace (or append) the section `name` in RESULTS.md with a dated, attributed body.

    The header records the machine, and the speed probe taken when the script started (on import
    of this module) and again now, so a section from a slower or busier machine shows it.
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    probe = (f"{START_PROBE:.0f} GFLOP/s at the start, {speed_probe():.0f} at the end "
             f"(float32 NumPy matmul {PROBE_SIZE}x{PROBE_SIZE}, all cores, best of {PROBE_REPEATS})")
    section = (
        f"<!-- section:{name} -->\n## {name}\n\n"
        f"- date: {stamp}\n- machine: {machine()}\n- speed probe: {probe}\n"
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
