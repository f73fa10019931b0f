"""Install size and cold start of the Hugging Face Space: ONNX-only vs with TensorFlow, same run.

    python benchmarks/space_footprint.py

Builds two Spaces from the shipped model with `dogcat space build`: one as shipped (its ONNX twin
matches, so requirements.txt has no Keras or TensorFlow) and, as the baseline, one from a copy
of the model without the .onnx (Keras + CPU TensorFlow). For each: a fresh venv, `pip install -r
requirements.txt` (timed), the venv's size on disk, and the seconds from `python app.py` to the
Gradio API answering on 127.0.0.1.
"""

from __future__ import annotations

import shutil
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


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def cold_start(space: Path, python: Path) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HOME": str(space)}
    started = time.perf_counter()
    server = subprocess.Popen([str(python), "app.py"], cwd=space, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2):
                    return time.perf_counter() - started
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise RuntimeError(f"the Space in {space} did not start") from None
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(space: Path, tmp: Path, name: str) -> dict:
    venv = tmp / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(space / "requirements.txt")],
                   check=True, capture_output=True)
    install = time.perf_counter() - started
    return {"requirements": (space / "requirements.txt").read_text().split(), "install_s": install,
            "size_mib": folder_mib(venv), "cold_start_s": cold_start(space, venv / "bin" / "python")}


def main() -> None:
    from dogcat.space import build_space

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keras_model = tmp / "keras-model"
        keras_model.mkdir()
        for file in (REPO / "models").iterdir():
            if file.suffix != ".onnx":
                shutil.copy(file, keras_model / file.name)
        results = {
            "tensorflow": measure(build_space(tmp / "space-tf", keras_model / "dog_cat_classifier.keras"), tmp, "tf"),
            "onnx": measure(build_space(tmp / "space-onnx"), tmp, "onnx"),
        }
    tf, onnx = results["tensorflow"], results["onnx"]
    rows = [
        ("requirements.txt", " ".join(tf["requirements"]), " ".join(onnx["requirements"]), ""),
        ("venv size on disk", f"{tf['size_mib']:.0f} MiB", f"{onnx['size_mib']:.0f} MiB", f"{onnx['size_mib'] / tf['size_mib']:.2f}"),
        ("`pip install -r requirements.txt`", f"{tf['install_s']:.0f} s", f"{onnx['install_s']:.0f} s",
         f"{onnx['install_s'] / tf['install_s']:.2f}"),
        ("cold start: `python app.py` to API answering", f"{tf['cold_start_s']:.1f} s", f"{onnx['cold_start_s']:.1f} s",
         f"{onnx['cold_start_s'] / tf['cold_start_s']:.2f}"),
    ]
    table = "| measurement | Keras + TensorFlow Space (baseline) | ONNX-only Space | ratio |\n|---|---|---|---|\n"
    table += "\n".join(f"| {' | '.join(row)} |" for row in rows)
    print(table)
    write_section("Space footprint: ONNX-only vs TensorFlow", "python benchmarks/space_footprint.py",
                  "Both built by `dogcat space build` from the shipped model (the baseline from a copy without "
                  "its .onnx); pip downloads from PyPI, so install times include the network.\n\n" + table,
                  ("gradio", "onnxruntime", "tensorflow-cpu"))


if __name__ == "__main__":
    main()
