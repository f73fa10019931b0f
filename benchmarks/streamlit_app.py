"""Streamlit app: time from launch to first prediction, and memory after 10 vs 200 predictions.

    python benchmarks/streamlit_app.py [--predictions 200]

1. Cold start. `dogcat app` is launched, a headless Chromium (/usr/bin/chromium) opens the page,
   uploads a photo and waits for the label. Baseline, same run: a fresh Python process that
   loads the same model with `Classifier.from_path()` and classifies the same photo.
2. Memory. A worker process drives the page with streamlit's AppTest, one upload per rerun, and
   reports its resident memory (VmRSS) after 10 and after N predictions. Baseline, same run: a
   worker that calls `Classifier.probabilities` N times without Streamlit.

Photos come from $DOGCAT_SHARED_DATA when set (the Kaggle sample), else they are generated.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def photos(count: int) -> list[bytes]:
    shared = os.environ.get("DOGCAT_SHARED_DATA")
    if shared and Path(shared).is_dir():
        files = sorted(Path(shared).glob("*.jpg"))[:count]
        return [f.read_bytes() for f in files]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_worker(mode: str, predictions: int) -> None:
    """Runs in a child process; prints JSON {"after_10": MiB, "after_n": MiB}."""
    images = photos(predictions)
    readings = {}
    if mode == "app":
        from streamlit.testing.v1 import AppTest

        app = AppTest.from_file(str(REPO / "demos" / "streamlit_app.py"), default_timeout=120).run()
        for i in range(predictions):
            app.file_uploader(key="uploads").set_value([(f"{i}.jpg", images[i % len(images)], "image/jpeg")])
            app.run()
            assert len(app.subheader) == 1, "no prediction shown"
            if i + 1 in (10, predictions):
                readings[i + 1] = rss_mib()
    else:
        from dogcat.inference import Classifier

        classifier = Classifier.from_path()
        for i in range(predictions):
            classifier.probabilities(images[i % len(images)])
            if i + 1 in (10, predictions):
                readings[i + 1] = rss_mib()
    print(json.dumps({"after_10": readings[10], "after_n": readings[predictions]}))


def run_worker(mode: str, predictions: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--memory-worker", mode, "--predictions", str(predictions)],
                            capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def library_cold_start(photo: Path) -> float:
    code = "from dogcat.inference import Classifier; import sys; Classifier.from_path().probabilities(sys.argv[1])"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(photo)], check=True, cwd=REPO, capture_output=True)
    return time.perf_counter() - started


def app_cold_start(photo: Path) -> tuple[float, float]:
    """Seconds from launch to the health check answering, and to the first label on the page."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "dogcat", "app", "--port", str(port)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.perf_counter() - started > 120 or server.poll() is not None:
                    raise RuntimeError("dogcat app did not start") from None
                time.sleep(0.1)
        ready = time.perf_counter() - started
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.locator('input[type="file"]').set_input_files([photo])
            page.locator('[data-testid="stHeading"] h3').first.wait_for(timeout=120_000)
            first = time.perf_counter() - started
            browser.close()
        return ready, first
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--predictions", type=int, default=200)
    parser.add_argument("--memory-worker", choices=["app", "library"])
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.predictions)
        return

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        photo.write_bytes(photos(1)[0])
        baseline = library_cold_start(photo)
        ready, first = app_cold_start(photo)
    app_memory = run_worker("app", args.predictions)
    library_memory = run_worker("library", args.predictions)
    n = args.predictions
    rows = [
        ("library cold start: new process, load model, classify one photo (baseline)", f"{baseline:.2f} s"),
        ("`dogcat app`: launch to health check answering", f"{ready:.2f} s"),
        ("`dogcat app`: launch to first label in Chromium", f"{first:.2f} s ({first / baseline:.2f}x baseline)"),
        (f"app (AppTest) RSS after 10 / {n} predictions", f"{app_memory['after_10']:.0f} / {app_memory['after_n']:.0f} MiB "
         f"({app_memory['after_n'] - app_memory['after_10']:+.0f} MiB)"),
        (f"library RSS after 10 / {n} predictions (baseline)", f"{library_memory['after_10']:.0f} / "
         f"{library_memory['after_n']:.0f} MiB ({library_memory['after_n'] - library_memory['after_10']:+.0f} MiB)"),
    ]
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    source = "Kaggle sample" if os.environ.get("DOGCAT_SHARED_DATA") else "generated 200x200 JPEGs"
    write_section("Streamlit app", f"python benchmarks/streamlit_app.py --predictions {n}",
                  f"Photos: {source}; the shipped model.\n\n{table}", ("streamlit", "keras", "tensorflow-cpu"))


if __name__ == "__main__":
    main()
