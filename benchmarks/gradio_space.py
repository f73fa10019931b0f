"""Gradio Space: requests per second and p50/p95 latency through gradio_client, against a local Space.

    python benchmarks/gradio_space.py [--requests 60] [--burst 40]

1. Baseline, same run, before any server starts: the same photos through
   `Classifier.probabilities` in this process (decode + model call, no HTTP, no queue).
2. `dogcat space build` into a temporary folder; its app.py is started on 127.0.0.1:<free port>.
   a. sequential: one gradio_client request at a time (upload + queue + predict + result);
   b. burst: all --burst requests submitted at once from --burst threads, one client each.
   The ratios to the baseline show what HTTP, the upload and Gradio's queue add.

Photos come from the Kaggle sample ($DOGCAT_SHARED_DATA, or ../shared beside the checkout) when
present, else the demo's example photos.
Only 127.0.0.1 is contacted; every loop is bounded by its count and a timeout.
"""

from __future__ import annotations

import argparse
import ast
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras is imported: keep the output to the numbers
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

START_TIMEOUT = 180  # seconds for the Space to answer
REQUEST_TIMEOUT = 120


def photos(count: int) -> tuple[list[Path], str]:
    shared = os.environ.get("DOGCAT_SHARED_DATA") or REPO.parent / "shared/data/kaggle-dogs-vs-cats-5k/train"
    if Path(shared).is_dir():
        files = sorted(Path(shared).glob("*.jpg"))[:count]
        return files, f"the first {len(files)} Kaggle-sample JPEGs (200x200)"
    files = sorted((REPO / "demos" / "examples").glob("*.jpg"))
    return files, f"the demo's {len(files)} example photos, cycled"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {"p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000,
            "rps": len(latencies) / wall, "n": len(latencies)}


def baseline(images: list[Path], requests: int, model: Path) -> dict[str, float]:
    from dogcat.inference import Classifier

    classifier = Classifier.from_path(model)
    for path in images[:3]:
        classifier.probabilities(path)  # warm-up: first calls build the graph
    latencies = []
    started = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        classifier.probabilities(images[i % len(images)])
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - started)


def start_space(space: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DOGCAT_MODEL", "PYTHONPATH")}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/gradio_api/info", timeout=2):
                return server, url, time.perf_counter() - started
        except OSError:
            if server.poll() is not None or time.perf_counter() - started > START_TIMEOUT:
                server.terminate()
                raise RuntimeError("the Space's app.py did not start") from None
            time.sleep(0.1)


def through_gradio(url: str, images: list[Path], requests: int, burst: int) -> tuple[dict, dict]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    for path in images[:3]:
        client.predict(handle_file(str(path)), api_name="/predict")  # warm-up
    latencies = []
    started = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        result = client.predict(handle_file(str(images[i % len(images)])), api_name="/predict")
        latencies.append(time.perf_counter() - t0)
        assert result[2]["verdict"] in {"cat", "dog", "neither", "unsure", "too_small"}  # /predict: verdict, probabilities, result, overlay
    sequential = summary(latencies, time.perf_counter() - started)

    # Burst: every request waits at a barrier, so all are sent at the same moment, each by its own client.
    clients = [Client(url, verbose=False) for _ in range(burst)]
    barrier = threading.Barrier(burst)

    def one(i: int) -> float:
        barrier.wait(timeout=REQUEST_TIMEOUT)
        t0 = time.perf_counter()
        job = clients[i].submit(handle_file(str(images[i % len(images)])), api_name="/predict")
        job.result(timeout=REQUEST_TIMEOUT)
        return time.perf_counter() - t0

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=burst) as pool:
        burst_latencies = list(pool.map(one, range(burst)))
    return sequential, summary(burst_latencies, time.perf_counter() - started)


def app_constants(app: Path) -> dict[str, object]:
    """The module-level constants of the Space's app.py, read without importing it."""
    constants = {}
    for node in ast.parse(app.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return constants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="sequential requests (default: 60)")
    parser.add_argument("--burst", type=int, default=40, help="requests sent at once (default: 40)")
    args = parser.parse_args()

    from dogcat.space import build_space

    images, source = photos(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        space = build_space(Path(tmp) / "space")
        limits = app_constants(space / "app.py")
        base = baseline(images, args.requests, space / "models")
        server, url, ready = start_space(space)
        try:
            sequential, burst = through_gradio(url, images, args.requests, args.burst)
        finally:
            server.terminate()
            server.wait(timeout=30)

    def row(name: str, s: dict) -> str:
        return f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['rps']:.1f} |"

    table = "\n".join([
        "| path | requests | p50 ms | p95 ms | requests/s |",
        "|---|---|---|---|---|",
        row("in-process `Classifier.probabilities`, sequential (baseline)", base),
        row("gradio_client -> local Space, sequential", sequential),
        row(f"gradio_client -> local Space, {args.burst} at once", burst),
    ])
    ratios = (
        f"Ratios to the baseline: sequential p50 {sequential['p50'] / base['p50']:.1f}x, "
        f"sequential throughput {sequential['rps'] / base['rps']:.2f}x, "
        f"burst throughput {burst['rps'] / base['rps']:.2f}x. "
        f"The Space answered {ready:.1f} s after `python app.py` started."
    )
    print(table)
    print(ratios)
    write_section(
        "Gradio Space",
        f"python benchmarks/gradio_space.py --requests {args.requests} --burst {args.burst}",
        f"Photos: {source}; the shipped model; the Space's app.py as built by `dogcat space build` "
        f"(concurrency limit {limits['CONCURRENCY_LIMIT']}, queue size {limits['QUEUE_MAX_SIZE']}: "
        "demos/gradio_app.py). Latency is per request, "
        "client side; a burst's requests/s is requests divided by the burst's wall time. The clients and "
        "the server share this machine's cores.\n\n"
        f"{table}\n\n{ratios}",
        ("gradio", "gradio_client", "keras", "tensorflow-cpu"),
    )


if __name__ == "__main__":
    main()
