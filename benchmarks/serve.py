"""The HTTP API: `dogcat serve` against `dogcat predict` and a naive FastAPI server, in one run.

    python benchmarks/serve.py [--files 2000] [--clients 32] [--runtime onnx] [--source KAGGLE_TRAIN_DIR]
                               [--latency-requests 200] [--rss-requests 10000] [--burst 200]
    python benchmarks/serve.py --scale-out [--files 2000] [--clients 32] [--runtime onnx] [--rounds 2] [--per-request 8]

On the same `--files` Kaggle photos and the same runtime:
- `dogcat predict --csv` on a folder of them, a fresh process timed from start to exit (the batch
  CLI is the ceiling a server can approach);
- `dogcat serve` (dynamic batching) and a naive FastAPI server that calls `Classifier.predict_one`
  once per request in FastAPI's threadpool (written here, `--naive-server`), each in its own
  process, timed from the first request to the last answer of `--clients` concurrent clients
  (raw-body POSTs from one aiohttp process on the same machine: the clients' own CPU is in both, and
  printed);
- one client: p50 latency of `dogcat serve` against the in-process `predict_one` on the same photo;
- memory: the idle server's RSS on the int8 runtime, after 1,000 requests and after `--rss-requests`;
- a burst of `--burst` clients at once: every request answered 200 or 429, none cut off, and the
  server still answering afterwards.
Photos are read into memory first, so disk reads are in neither side.

`--scale-out` measures instead how `dogcat serve --address` grows with the cluster: a Ray cluster of
one 1-CPU node (one replica) against one of two (two replicas), started here as benchmarks/batch.py
does (`ray start --num-cpus 1`, each node pinned to its own core). The deploying command and the
clients sit on the head's core, so one node is one core for everything and two nodes are two. Each
cluster takes a warm-up pass (`--clients` x 4 requests) once every replica is up, then the same
`--clients` clients send the same `--files` photos through Ray Serve's proxy: the rate after
start-up, one photo a request, then `--per-request` photos a request (/v1/classify/batch: Ray Serve's
proxy and replica pay their cost per request, not per photo). The two alternate over `--rounds`, so
drift in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastapi import Request

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

MODEL = REPO / "models" / "dog_cat_classifier.keras"


def naive_server(port: int, runtime: str) -> None:
    """The baseline: one Classifier call per request, in FastAPI's threadpool, no batching."""
    import uvicorn
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from dogcat.inference import Classifier

    classifier = Classifier.from_path(MODEL, runtime=runtime)
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict:  # Request: a module global, so FastAPI resolves the annotation
        data = await request.body()
        return (await run_in_threadpool(classifier.predict_one, data)).as_row(classifier.class_names.values())

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process on 127.0.0.1, ready when /readyz answers 200; stopped on exit."""

    def __init__(self, command: list[str], port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command} exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} never became ready")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used: a cost per photo that another job's load barely moves."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve_command(port: int, runtime: str) -> list[str]:
    return [sys.executable, "-m", "dogcat", "serve", "--model", str(MODEL), "--runtime", runtime, "--port", str(port)]


async def _load(url: str, photos: list[bytes], clients: int, per_request: int = 1) -> tuple[float, dict[int, int], list[float]]:
    """Send every photo once from `clients` concurrent clients: (seconds, statuses, each request's seconds).
    `per_request` > 1: that many photos a request, to /v1/classify/batch (statuses count requests).

    aiohttp, not httpx: the clients share the server's two cores, and httpx's client spent 3.7 ms of CPU
    a request (a third of what the server spends classifying the photo), aiohttp 0.2 ms. A load generator
    must cost little next to what it measures (wrk's and oha's reason to exist); `client_cpu_ms` says what
    it cost."""
    import aiohttp

    queue = [photos[i : i + per_request] for i in range(0, len(photos), per_request)][::-1]
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
        async def client() -> None:
            while queue:
                group = queue.pop()
                if per_request == 1:
                    route, body, headers = "/v1/classify", group[0], {"content-type": "image/jpeg"}
                else:
                    route, body, headers = "/v1/classify/batch", aiohttp.FormData(), None
                    for number, photo in enumerate(group):
                        body.add_field("files", photo, filename=f"{number}.jpg", content_type="image/jpeg")
                started = time.perf_counter()
                try:
                    async with http.post(route, data=body, headers=headers) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError):
                    status = -1  # cut off: the one outcome that must never happen
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, statuses, latencies


CLIENT_CPU: list[float] = []  # the load generator's CPU seconds a request, per load() call


def load(url: str, photos: list[bytes], clients: int, per_request: int = 1) -> tuple[float, dict[int, int], list[float]]:
    cpu = time.process_time()
    result = asyncio.run(_load(url, photos, clients, per_request))
    CLIENT_CPU.append((time.process_time() - cpu) / max(1, len(photos)))
    return result


def in_process_p50(photo: bytes, runtime: str, requests: int) -> float:
    from dogcat.inference import Classifier

    classifier = Classifier.from_path(MODEL, runtime=runtime)
    for _ in range(5):
        classifier.predict_one(photo)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        classifier.predict_one(photo)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _serve_on_ray(address: str, replicas: int, runtime: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`dogcat serve --address` as a user runs it, on the head's core; returns once every replica is up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as sink:
        process = subprocess.Popen(["taskset", "-c", "0", *serve_command(port, runtime), "--address", address,
                                    "--replicas", str(replicas)], stdout=sink, stderr=sink,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 300
    while "replica(s) serving on" not in log.read_text():  # serve.run returned: every replica is running
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"dogcat serve --address did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    with urllib.request.urlopen(f"{url}/readyz", timeout=30) as answer:
        assert answer.status == 200
    return process, url


def scale_out(photos: list[bytes], clients: int, runtime: str, rounds: int, per_request: int) -> list[str]:
    """Markdown rows: Ray Serve on one 1-CPU node against two, the same photos and clients, after start-up,
    one photo a request and `per_request` a request (/v1/classify/batch) on the same cluster."""
    import signal

    from benchmarks.batch import _ray_node, _wait_nodes

    ray = str(Path(sys.executable).with_name("ray"))
    # Token auth, as the README tells users (and batch.py's scale-out does): nodes, `ray status`, the deployer.
    os.environ["RAY_AUTH_MODE"] = "token"
    subprocess.run([ray, "get-auth-token", "--generate"], capture_output=True)
    os.sched_setaffinity(0, {0})  # the clients share the head's core: one node is one core for everything
    shapes = (1, per_request)
    rates: dict[tuple[int, int], list[float]] = {(n, shape): [] for n in (1, 2) for shape in shapes}
    startup: dict[int, list[float]] = {1: [], 2: []}
    warm = (photos * (4 * clients // len(photos) + 1))[: 4 * clients]
    with tempfile.TemporaryDirectory(prefix="dogcat-serve-scale-") as work:
        for round_number in range(rounds):
            for nodes in (1, 2):
                port = free_port()
                address = f"127.0.0.1:{port}"
                started = time.perf_counter()
                cluster = [_ray_node(["--head", "--port", str(port), "--include-dashboard", "false"], 0)]
                server = None
                try:
                    _wait_nodes(address, 1)
                    if nodes == 2:
                        cluster.append(_ray_node(["--address", address], 1))
                        _wait_nodes(address, 2)
                    server, url = _serve_on_ray(address, nodes, runtime, Path(work) / f"serve-{round_number}-{nodes}.log")
                    startup[nodes].append(time.perf_counter() - started)
                    load(url, warm, clients)
                    for shape in shapes:
                        seconds, statuses, _ = load(url, photos, clients, shape)
                        if statuses.get(200) != -(-len(photos) // shape):
                            sys.exit(f"Ray Serve on {nodes} node(s) failed requests: {statuses}")
                        rates[nodes, shape].append(len(photos) / seconds)
                        print(f"  round {round_number + 1}, {nodes} node(s), {shape} photo(s) a request: "
                              f"{rates[nodes, shape][-1]:.1f} photos/s after {startup[nodes][-1]:.0f} s of start-up",
                              flush=True)
                finally:
                    if server is not None:
                        server.terminate()  # SIGTERM: the deployment is deleted, then it exits
                        try:
                            server.wait(timeout=60)
                        except subprocess.TimeoutExpired:
                            server.kill()
                    for node in reversed(cluster):
                        os.killpg(node.pid, signal.SIGTERM)
                    for node in reversed(cluster):
                        node.wait(timeout=60)
    median = {key: statistics.median(values) for key, values in rates.items()}
    return [
        f"{len(photos)} Kaggle photos, {clients} concurrent clients, runtime {runtime}, `dogcat serve --address` "
        "(Ray Serve, one replica of one CPU per node); clients and deployer on the head's core.",
        "",
        "| cluster | photos a request | photos/s after start-up (median of rounds) | per round | "
        "start-up to every replica up, s |",
        "|---|---|---|---|---|",
        *(f"| {n} node(s) of 1 CPU, {n} replica(s) | {shape} | {median[n, shape]:.1f} | "
          f"{', '.join(f'{rate:.1f}' for rate in rates[n, shape])} | {', '.join(f'{s:.0f}' for s in startup[n])} |"
          for shape in shapes for n in (1, 2)),
        "",
        *(f"- {shape} photo(s) a request: two nodes / one **{median[2, shape] / median[1, shape]:.2f}x** "
          f"(target >= 1.7x; per round: {', '.join(f'{b / a:.2f}x' for a, b in zip(rates[1, shape], rates[2, shape], strict=True))})."
          for shape in shapes),
    ]


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_note(start: float) -> str:
    """The 1-minute load average at the start and now: on 2 cores, above ~2.5 other jobs share the machine."""
    return (f"Load average (1 min) {start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
            f"{os.cpu_count()} cores.")


def main() -> None:
    load_start = os.getloadavg()[0]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--runtime", default="onnx", choices=("onnx", "onnx-int8"))
    parser.add_argument("--source", type=Path, default=Path(os.environ.get(
        "DOGCAT_SHARED_DATA", REPO.parent / "shared" / "data" / "kaggle-dogs-vs-cats-5k" / "train")))
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--rss-requests", type=int, default=10000, help="0: skip the memory measurement")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--scale-out", action="store_true",
                        help="only Ray Serve (`dogcat serve --address`) on one 1-CPU node against two")
    parser.add_argument("--rounds", type=int, default=2, help="with --scale-out: alternations of one and two nodes")
    parser.add_argument("--per-request", type=int, default=8,
                        help="with --scale-out: also measure this many photos a request, to /v1/classify/batch")
    parser.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        naive_server(args.naive_server, args.runtime)
        return

    paths = sorted(args.source.glob("*.jpg"))[: args.files]
    if len(paths) < args.files:
        sys.exit(f"only {len(paths)} photos in {args.source}")
    photos = [path.read_bytes() for path in paths]
    if args.scale_out:
        text = "\n".join([*scale_out(photos, args.clients, args.runtime, args.rounds, args.per_request), "",
                          load_note(load_start)])
        print(text)
        write_section("Serving: Ray Serve scale-out, 1 vs 2 one-CPU nodes",
                      f"python benchmarks/serve.py --scale-out --files {args.files} --clients {args.clients} "
                      f"--runtime {args.runtime} --rounds {args.rounds} --per-request {args.per_request}", text,
                      packages=("onnxruntime", "ray", "fastapi", "aiohttp", "numpy"))
        return
    lines = []

    with tempfile.TemporaryDirectory(prefix="dogcat-serve-bench-") as folder:
        for path in paths:
            shutil.copy(path, folder)
        started, cpu = time.perf_counter(), _children_cpu()
        subprocess.run([sys.executable, "-m", "dogcat", "predict", folder, "--csv", "--runtime", args.runtime,
                        "--model", str(MODEL)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        predict_rate = len(paths) / (time.perf_counter() - started)
        predict_cpu = (_children_cpu() - cpu) / len(paths)
    print(f"dogcat predict: {predict_rate:.0f} photos/s, {predict_cpu * 1000:.1f} ms CPU a photo", flush=True)

    port = free_port()
    with Server([sys.executable, __file__, "--naive-server", str(port), "--runtime", args.runtime], port) as naive:
        cpu = naive.cpu_seconds()
        seconds, statuses, _ = load(naive.url, photos, args.clients)
        naive_rate = statuses.get(200, 0) / seconds
        naive_cpu = (naive.cpu_seconds() - cpu) / len(photos)
        if statuses.get(200) != len(photos):
            sys.exit(f"the naive server failed requests: {statuses}")
    print(f"naive FastAPI: {naive_rate:.0f} photos/s {statuses}", flush=True)

    port = free_port()
    with Server(serve_command(port, args.runtime), port) as server:
        cpu = server.cpu_seconds()
        seconds, statuses, _ = load(server.url, photos, args.clients)
        serve_rate = statuses.get(200, 0) / seconds
        serve_cpu, client_cpu = (server.cpu_seconds() - cpu) / len(photos), CLIENT_CPU[-1]
        if statuses.get(200) != len(photos):
            sys.exit(f"dogcat serve failed requests: {statuses}")
        print(f"dogcat serve: {serve_rate:.0f} photos/s {statuses}", flush=True)
        _, _, latencies = load(server.url, [photos[0]] * args.latency_requests, 1)
        serve_p50 = statistics.median(latencies[5:])
        burst_seconds, burst, _ = load(server.url, photos[: args.burst], args.burst)
        _, after_status, _ = load(server.url, photos[:10], 1)
        metrics = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
        calls = float(metrics.split("\ndogcat_batch_size_count ", 1)[1].split()[0])
        batched = float(metrics.split("\ndogcat_batch_size_sum ", 1)[1].split()[0])
    library_p50 = in_process_p50(photos[0], args.runtime, args.latency_requests)
    print(f"one client: serve p50 {serve_p50 * 1000:.1f} ms, in-process {library_p50 * 1000:.1f} ms", flush=True)
    print(f"burst of {args.burst}: {burst}; then {after_status}", flush=True)

    lines += [
        f"{len(paths)} Kaggle photos, {args.clients} concurrent clients, runtime {args.runtime}.",
        "",
        "| way in | photos/s | vs `dogcat predict` | vs naive FastAPI |",
        "|---|---|---|---|",
        f"| `dogcat predict --csv` (fresh process, start to exit) | {predict_rate:.0f} | 1.00x | |",
        f"| naive FastAPI (`predict_one` per request, threadpool) | {naive_rate:.0f} | {naive_rate / predict_rate:.2f}x | 1.00x |",
        f"| `dogcat serve` (dynamic batching) | {serve_rate:.0f} | {serve_rate / predict_rate:.2f}x | "
        f"{serve_rate / naive_rate:.2f}x |",
        "",
        f"- CPU a photo: `dogcat predict` {predict_cpu * 1000:.1f} ms (start-up included), naive server "
        f"{naive_cpu * 1000:.1f} ms, `dogcat serve` {serve_cpu * 1000:.1f} ms; the load generator "
        f"{client_cpu * 1000:.2f} ms a request.",
        f"- photos per model call in `dogcat serve` over the whole run: {batched / calls:.1f} on average.",
        f"- one client, one photo ({len(photos[0]) // 1024} KB JPEG), p50 of {args.latency_requests}: `dogcat serve` "
        f"{serve_p50 * 1000:.1f} ms, in-process `predict_one` {library_p50 * 1000:.1f} ms "
        f"({serve_p50 / library_p50:.2f}x).",
        f"- {args.burst} clients at once: {dict(sorted(burst.items()))} (status: count; -1 would be a cut-off "
        f"connection) in {burst_seconds:.1f} s; then {dict(after_status)} for 10 more requests.",
    ]

    if args.rss_requests:
        port = free_port()
        with Server(serve_command(port, "onnx-int8"), port) as server:
            idle = server.rss_mb()
            stream = (photos * (args.rss_requests // len(photos) + 1))[: args.rss_requests]
            load(server.url, stream[:1000], args.clients)
            first = server.rss_mb()
            load(server.url, stream[1000:], args.clients)
            last = server.rss_mb()
        print(f"RSS int8: idle {idle:.0f} MB, after 1,000 {first:.0f} MB, after {args.rss_requests} {last:.0f} MB")
        lines.append(f"- memory, int8 runtime: idle RSS {idle:.0f} MB; {first:.0f} MB after 1,000 requests, "
                     f"{last:.0f} MB after {args.rss_requests:,} ({last / first:.2f}x).")

    text = "\n".join([*lines, "", load_note(load_start)])
    print(text)
    write_section("Serving: dogcat serve vs predict and a naive FastAPI",
                  f"python benchmarks/serve.py --files {args.files} --clients {args.clients} --runtime {args.runtime} "
                  f"--latency-requests {args.latency_requests} --rss-requests {args.rss_requests} --burst {args.burst}",
                  text,
                  packages=("onnxruntime", "fastapi", "uvicorn", "aiohttp", "numpy"))


if __name__ == "__main__":
    main()
