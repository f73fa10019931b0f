"""Bulk classification: float32 vs int8, `dogcat predict` vs `dogcat batch` (Ray), in one run.

    python benchmarks/batch.py [--files 2000] [--rounds 2] [--model models/dog_cat_classifier.keras]
                               [--data data/dogcat-4k] [--source KAGGLE_TRAIN_DIR] [--neither FOLDER]
    python benchmarks/batch.py --scale-out [--files 2000] [--rounds 2]      (1 vs 2 one-CPU nodes)

Throughput, files per second, on the same `--files` Kaggle photos:
- the network alone (ONNX Runtime on decoded photos, batches of 32): float32, the raw int8
  graph, and the int8 runtime as served (int8 plus the float32 re-check of unsure photos);
- `dogcat predict --csv` on the folder, a fresh process timed from start to exit, float32 and int8;
- `dogcat batch` into a fresh output folder with a local Ray, float32 and int8: end to end, and
  steady (the rate after start-up, from the difference with a 32-photo job: Ray and the actors
  start in 10-20 s, which a job of millions of files pays once).
The commands alternate over `--rounds` rounds, so drift in the machine's load hits all alike;
medians are reported. Then the int8 contract: labels, accuracy and log loss against float32 on
the test split and on the Kaggle photos outside the dataset, and the share called "neither".
The int8 twin is written first if missing (`dogcat export --int8`, calibrated on `--data`).

`--scale-out` measures instead how `dogcat batch --address` grows with the cluster: a
cluster of one 1-CPU node against one of two, started here with `ray start`, each node pinned to
a core of its own with `taskset` (and the driver on the head's core), so that a "1-CPU node" is
one core as on a real machine and not a share of all of them. Both clusters run the same photos
in the same run, alternating over `--rounds`; the rate after start-up is again from the
difference with a 32-photo job.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from benchmarks.accuracy import outside_photos  # noqa: E402


def network_rates(model: Path, images: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Files/s of the three ONNX networks on decoded photos, best of `repeats` passes each, interleaved."""
    import onnxruntime

    from dogcat.inference import Classifier
    from dogcat.preprocessing import to_model_input

    inputs = to_model_input(images)
    float_session = onnxruntime.InferenceSession(str(model.with_name("dog_cat_classifier.onnx")))
    int8_session = onnxruntime.InferenceSession(str(model.with_name("dog_cat_classifier.int8.onnx")))
    int8_runtime = Classifier.from_path(model, runtime="onnx-int8", threads=os.cpu_count() or 1)  # one wide call, as the sessions above
    runs = {
        "float32": lambda batch: float_session.run(["probabilities", "features"], {"image": batch}),
        "int8 graph": lambda batch: int8_session.run(["probabilities", "features"], {"image": batch}),
        "int8 runtime (with re-check)": lambda batch: int8_runtime.predict_batch(batch),
    }
    best = {name: 0.0 for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run(inputs[:32])
            started = time.perf_counter()
            for start in range(0, len(inputs), 32):
                run(inputs[start : start + 32])
            best[name] = max(best[name], len(inputs) / (time.perf_counter() - started))
    return best


def timed(command: list[str]) -> float:
    """Seconds `command` took; one that fails stops the benchmark (the time of a failure measures nothing)."""
    started = time.perf_counter()
    result = subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[2:5])} ... failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return seconds


def _ray_node(args: list[str], core: int) -> subprocess.Popen:
    """`ray start ... --num-cpus 1 --block` on one core (its raylet and workers inherit the affinity)."""
    return subprocess.Popen(["taskset", "-c", str(core), str(Path(sys.executable).with_name("ray")), "start", *args,
                             "--num-cpus", "1", "--block", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_nodes(address: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([str(Path(sys.executable).with_name("ray")), "status", "--address", address],
                                capture_output=True, text=True)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if status.returncode == 0 and sum("node_" in line for line in active.splitlines()) >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} node(s)")


def written_rate(out_dir: Path) -> float:
    """Files/s after start-up, from the job's own output: the rows of every Parquet file but the
    first, over the time from the first file written to the last (start-up, up to the first
    block, drops out, and with it the noise of subtracting two jobs' start-ups)."""
    import pyarrow.parquet as pq

    parts = sorted(out_dir.glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(parts) < 3:
        return float("nan")
    rows = sum(pq.read_metadata(p).num_rows for p in parts[1:])
    return rows / (parts[-1].stat().st_mtime - parts[0].stat().st_mtime)


def scale_out(model: Path, folder: Path, small: Path, files: int, rounds: int, work: Path) -> list[str]:
    """Markdown rows: `dogcat batch --address` on one 1-CPU node and on two, and the ratio after start-up."""
    import signal
    import socket

    # Token auth, as the README tells users (and the tests do): the nodes, `ray status` and the jobs alike.
    os.environ["RAY_AUTH_MODE"] = "token"
    subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"], capture_output=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    seconds: dict[tuple[int, str], list[float]] = {(n, s): [] for n in (1, 2) for s in ("full", "small")}
    written: dict[int, list[float]] = {1: [], 2: []}
    for round_number in range(rounds):
        for nodes in (1, 2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            address = f"127.0.0.1:{port}"
            cluster = [_ray_node(["--head", "--port", str(port), "--include-dashboard", "false"], 0)]
            try:
                _wait_nodes(address, 1)
                if nodes == 2:
                    cluster.append(_ray_node(["--address", address], 1))
                    _wait_nodes(address, 2)
                for size, source in (("small", small), ("full", folder)):
                    out = Path(tempfile.mkdtemp(dir=work))
                    command = ["taskset", "-c", "0", sys.executable, "-m", "dogcat.cli", "batch", str(source), "--out",
                               str(out), "--model", str(model), "--address", address]
                    started = time.perf_counter()
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                    seconds[nodes, size].append(time.perf_counter() - started)
                    if size == "full":
                        written[nodes].append(written_rate(out))
                    print(f"  round {round_number + 1}, {nodes} node(s), {size}: {seconds[nodes, size][-1]:.1f} s"
                          + (f", {written[nodes][-1]:.1f} files/s after the first block" if size == "full" else ""),
                          flush=True)
            finally:
                for node in reversed(cluster):
                    os.killpg(node.pid, signal.SIGTERM)
                for node in reversed(cluster):
                    node.wait(timeout=60)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    # The difference with the 32-photo job, where it is larger than the start-up's own noise (10% of the job).
    steady = {n: (files - 32) / (median[n, "full"] - median[n, "small"])
              if median[n, "full"] - median[n, "small"] > 0.1 * median[n, "full"] else float("nan") for n in (1, 2)}
    after = {n: statistics.median(written[n]) for n in (1, 2)}
    rows = [
        "| cluster | end to end, files/s | after start-up (from its Parquet files' times), files/s | "
        "after start-up (difference with the 32-photo job), files/s | 32-photo job, s |",
        "|---|---|---|---|---|",
        *(f"| {n} node(s) of 1 CPU | {files / median[n, 'full']:.1f} | {after[n]:.1f} | {steady[n]:.1f} | "
          f"{median[n, 'small']:.1f} |" for n in (1, 2)),
        "",
        f"Two nodes / one, after start-up: **{after[2] / after[1]:.2f}x** from the files' times (target >= 1.7x; "
        f"per round: {', '.join(f'{b / a:.2f}x' for a, b in zip(written[1], written[2], strict=True))}), "
        f"{steady[2] / steady[1]:.2f}x from the difference; end to end: "
        f"{median[1, 'full'] / median[2, 'full']:.2f}x. Seconds per job (min-max over rounds): "
        + "; ".join(f"{n} node(s) {s}: {min(v):.1f}-{max(v):.1f} s" for (n, s), v in seconds.items()) + ".",
    ]
    return rows


def contract(model: Path, data: Path, source: Path, neither: Path | None = None) -> list[str]:
    """Markdown rows: float32 vs int8 on the test split and the outside photos (and photos of neither)."""
    from dogcat.data import read_split
    from dogcat.inference import Classifier

    test = read_split(data, "test")
    sets = {"test split": (test.paths, test.labels), "Kaggle photos outside the dataset": outside_photos(source, data)}
    classifiers = {runtime: Classifier.from_path(model, runtime=runtime) for runtime in ("onnx", "onnx-int8")}
    if neither is not None:
        from dogcat.data import expand_paths

        found = expand_paths([str(neither)])[0]
        sets["photos of neither (`--neither`; labels meaningless)"] = (found, np.zeros(len(found), int))
    rows = []
    for name, (paths, labels) in sets.items():
        scores = {}
        for runtime, classifier in classifiers.items():
            predictions = classifier.predict([str(p) for p in paths])
            dog = np.array([p.probabilities["dog"] if p.probabilities else np.nan for p in predictions])
            chosen = np.clip(np.where(labels == 1, dog, 1 - dog), 1e-7, 1)
            scores[runtime] = (dog > 0.5, float(np.mean((dog > 0.5) == labels)), float(-np.mean(np.log(chosen))),
                               np.array([p.verdict for p in predictions]), dog)
        f, q = scores["onnx"], scores["onnx-int8"]
        rows.append(
            f"| {name} ({len(paths)}) | {np.mean(f[0] == q[0]):.2%} ({int(np.sum(f[0] != q[0]))} differ) "
            f"| {f[1]:.4f} / {q[1]:.4f} | {f[2]:.4f} / {q[2]:.4f} | {np.mean(f[3] == q[3]):.2%} "
            f"| {np.mean(f[3] == 'neither'):.2%} / {np.mean(q[3] == 'neither'):.2%} | {np.nanmax(np.abs(f[4] - q[4])):.3f} |")
    return rows


def main() -> None:
    from dogcat.artifacts import INT8_ONNX_FILENAME
    from dogcat.export import export_int8
    from dogcat.preprocessing import decode_image_with_size

    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "dog_cat_classifier.keras")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dogcat-4k", help="prepared dataset (int8 calibration, test split)")
    parser.add_argument("--source", type=Path, default=os.environ.get("DOGCAT_SHARED_DATA"),
                        help="the Kaggle training folder (default: $DOGCAT_SHARED_DATA)")
    parser.add_argument("--neither", type=Path, help="a folder of photos with no cat or dog: int8's verdicts there too")
    parser.add_argument("--print-only", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--scale-out", action="store_true",
                        help="only `dogcat batch --address` on one 1-CPU Ray node against two")
    args = parser.parse_args()
    if args.source is None or not args.source.is_dir():
        parser.error(f"--source must be the Kaggle training folder. Received: source={args.source}")
    args.source = args.source.resolve()  # the photos are linked from a temporary folder

    work = Path(tempfile.mkdtemp(prefix="dogcat-batch-bench-"))
    try:
        model_dir = work / "model"
        shutil.copytree(args.model.parent, model_dir)
        model = model_dir / args.model.name
        if not (model_dir / INT8_ONNX_FILENAME).is_file():
            export_int8(model, args.data)
        photos = sorted(args.source.glob("*.jpg"))[: args.files]
        folder, small = work / "photos", work / "small"
        folder.mkdir()
        small.mkdir()
        for index, photo in enumerate(photos):
            os.symlink(photo, folder / photo.name)
            if index < 32:
                os.symlink(photo, small / photo.name)
        if args.scale_out:
            rows = scale_out(model, folder, small, len(photos), args.rounds, work)
            text = "\n".join([f"{len(photos)} Kaggle photos (`sorted(source.glob('*.jpg'))[:{args.files}]`), float32, "
                              f"{args.rounds} rounds, medians; each node pinned to a core of its own (`taskset`), "
                              "the driver on the head's; processes timed from start to exit.", "", *rows])
            print(text)
            if not args.print_only:
                write_section("Bulk: scale-out, 1 vs 2 one-CPU Ray nodes", f"python benchmarks/batch.py --scale-out "
                              f"--files {args.files} --rounds {args.rounds}", text, packages=("onnxruntime", "ray", "numpy"))
            return
        images = np.stack([decode_image_with_size(p, 224)[0] for p in photos])
        print(f"{len(photos)} photos; network alone ...", flush=True)
        network = network_rates(model, images)
        for name, rate in network.items():
            print(f"  {name}: {rate:.0f} files/s", flush=True)

        dogcat = [sys.executable, "-m", "dogcat.cli"]
        commands = {}
        for runtime in ("onnx", "onnx-int8"):
            commands[f"predict {runtime}"] = lambda r=runtime: timed(
                [*dogcat, "predict", str(folder), "--csv", "--model", str(model), "--runtime", r])
            for name, source in (("", folder), (" (32 photos)", small)):
                commands[f"batch {runtime}{name}"] = lambda r=runtime, s=source: timed(
                    [*dogcat, "batch", str(s), "--out", tempfile.mkdtemp(dir=work), "--model", str(model), "--runtime", r])
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for round_number in range(args.rounds):
            for name, command in commands.items():
                seconds[name].append(command())
                print(f"  round {round_number + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        rate = {name: (32 if "32 photos" in name else len(photos)) / value for name, value in median.items()}
        steady = {runtime: (len(photos) - 32) / (median[f"batch {runtime}"] - median[f"batch {runtime} (32 photos)"])
                  for runtime in ("onnx", "onnx-int8")}
        print("int8 contract ...", flush=True)
        contract_rows = contract(model, args.data, args.source, args.neither)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    spread = {name: f"{min(v):.1f}-{max(v):.1f} s" for name, v in seconds.items()}
    body = [
        f"{len(photos)} Kaggle photos (`sorted(source.glob('*.jpg'))[:{args.files}]`), {args.rounds} rounds, medians; "
        "processes timed from start to exit.",
        "",
        "| what | float32 | int8 | int8 / float32 |",
        "|---|---|---|---|",
        f"| network alone, files/s (ceiling; int8 graph without the re-check) | {network['float32']:.0f} | "
        f"{network['int8 graph']:.0f} | {network['int8 graph'] / network['float32']:.2f}x |",
        f"| network alone, int8 runtime as served (re-check of unsure photos) | {network['float32']:.0f} | "
        f"{network['int8 runtime (with re-check)']:.0f} | {network['int8 runtime (with re-check)'] / network['float32']:.2f}x |",
        f"| `dogcat predict --csv`, files/s end to end | {rate['predict onnx']:.0f} | {rate['predict onnx-int8']:.0f} | "
        f"{rate['predict onnx-int8'] / rate['predict onnx']:.2f}x |",
        f"| `dogcat batch` (local Ray), files/s end to end | {rate['batch onnx']:.0f} | {rate['batch onnx-int8']:.0f} | "
        f"{rate['batch onnx-int8'] / rate['batch onnx']:.2f}x |",
        f"| `dogcat batch`, files/s after start-up | {steady['onnx']:.0f} | {steady['onnx-int8']:.0f} | "
        f"{steady['onnx-int8'] / steady['onnx']:.2f}x |",
        f"| `dogcat batch` / `dogcat predict`, end to end | {rate['batch onnx'] / rate['predict onnx']:.2f}x | "
        f"{rate['batch onnx-int8'] / rate['predict onnx-int8']:.2f}x | |",
        f"| `dogcat batch` after start-up / `dogcat predict` | {steady['onnx'] / rate['predict onnx']:.2f}x | "
        f"{steady['onnx-int8'] / rate['predict onnx-int8']:.2f}x | |",
        "",
        "Seconds per command (min-max over rounds): " + "; ".join(f"{k}: {v}" for k, v in spread.items()) + ".",
        "",
        "int8 contract (float32 / int8; labels agree: argmax; verdicts agree: cat, dog, neither, unsure, too small):",
        "",
        "| photos | labels agree | accuracy | log loss | verdicts agree | neither | largest P(dog) difference |",
        "|---|---|---|---|---|---|---|",
        *contract_rows,
    ]
    text = "\n".join(body)
    print(text)
    if not args.print_only:
        write_section("Bulk: float32 vs int8, predict vs batch (Ray)", f"python benchmarks/batch.py --files {args.files} "
                      f"--rounds {args.rounds}" + (" --neither NEITHER_DIR" if args.neither else ""), text, packages=("onnxruntime", "ray", "numpy"))


if __name__ == "__main__":
    main()
