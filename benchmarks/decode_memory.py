"""Streamlit app: the server's peak memory when many sessions upload huge-but-tiny images at once.

    python benchmarks/decode_memory.py [--sessions 10]

`dogcat app` is launched and a headless Chromium (Playwright, /usr/bin/chromium) opens one page
per session. One warm-up page classifies a small photo (the model is then loaded). Then bursts,
each with its pages uploading the same file at once and waiting for their results:

1. every page, the tester's file from issue #13: a single-colour 118-megapixel RGB PNG (a few
   hundred KB), which used to cost about 1 GB per decode and is now refused from its header;
2. one page, then every page, the worst file dogcat accepts: a single-colour palette PNG with a
   transparent index, sized just under the decode budget (MAX_DECODE_BYTES). Per byte of budget
   it is the costliest decode (palette -> RGBA -> flattened onto white), about twice the budget
   at its peak. One session against many shows what the concurrency bound holds back.

Peak memory is the server's VmHWM from /proc (the kernel's resident high-water mark, so no peak
can fall between samples), read after the warm-up and after each burst.
"""

from __future__ import annotations

import argparse
import io
import math
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from benchmarks.streamlit_app import CHROMIUM_ARGS, photos  # noqa: E402

RESULT = """() => document.querySelectorAll('[data-testid="stHeading"] h3').length
    + document.querySelectorAll('[data-testid="stAlertContentError"]').length >= 1"""


def single_colour_rgb_png(width: int, height: int) -> bytes:
    """A valid all-grey 8-bit RGB PNG, compressed row block by row block (never whole in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x80" * (3 * width)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 500) for _ in range(height // 500)]
    parts.append(compressor.compress(row * (height % 500)))
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def worst_accepted_png() -> tuple[bytes, tuple[int, int]]:
    """Palette PNG with a transparent index, 4:3, the largest the decode budget admits."""
    from PIL import Image

    from dogcat.preprocessing import _PIXEL_BYTES, _RGB_PIXEL_BYTES, MAX_DECODE_BYTES

    pixels = MAX_DECODE_BYTES // (_PIXEL_BYTES["P"] + _RGB_PIXEL_BYTES)
    width = math.isqrt(pixels * 4 // 3)
    size = (width, pixels // width)
    image = Image.new("P", size, 0)
    image.putpalette([230, 120, 40] * 256)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=1)
    return buffer.getvalue(), size


def memory_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def burst(pages, path: Path) -> tuple[float, list[str]]:
    """Every page uploads `path` at once; seconds until all show a result, and each result."""
    started = time.perf_counter()
    for page in pages:
        page.locator('input[type="file"]').set_input_files([path])
    outcomes = []
    for page in pages:
        page.wait_for_function(RESULT, timeout=600_000)
        error = page.locator('[data-testid="stAlertContentError"]')
        outcomes.append(error.first.inner_text() if error.count() else page.locator('[data-testid="stHeading"] h3').first.inner_text())
    return time.perf_counter() - started, outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.servers import free_port

    worst, worst_size = worst_accepted_png()
    tester_size = (12500, 9440)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"warm-up": Path(tmp) / "photo.jpg", "tester": Path(tmp) / "huge-118mp.png", "worst": Path(tmp) / "worst.png"}
        files["warm-up"].write_bytes(photos(1)[0])
        files["tester"].write_bytes(single_colour_rgb_png(*tester_size))
        files["worst"].write_bytes(worst)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # `dogcat app` replaces itself with Streamlit (execve): this pid is the server's.
        server = subprocess.Popen([sys.executable, "-m", "dogcat", "app", "--port", str(port)], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("dogcat app did not start") from None
                    time.sleep(0.2)
            readings = {"started": memory_mib(server.pid)}
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                warm = browser.new_page()
                warm.goto(url)
                burst([warm], files["warm-up"])
                warm.close()
                readings["warm"] = memory_mib(server.pid)
                pages = []
                for _ in range(args.sessions):
                    page = browser.new_page()
                    page.goto(url)
                    page.locator('input[type="file"]').wait_for(state="attached", timeout=60_000)
                    pages.append(page)
                tester_seconds, tester_outcomes = burst(pages, files["tester"])
                readings["tester"] = memory_mib(server.pid)
                for page in pages:  # fresh pages, so the next results are not the old ones
                    page.reload()
                    page.locator('input[type="file"]').wait_for(state="attached", timeout=60_000)
                one_seconds, _ = burst(pages[:1], files["worst"])
                readings["one"] = memory_mib(server.pid)
                pages[0].reload()
                pages[0].locator('input[type="file"]').wait_for(state="attached", timeout=60_000)
                worst_seconds, worst_outcomes = burst(pages, files["worst"])
                readings["worst"] = memory_mib(server.pid)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
        sizes = {name: path.stat().st_size for name, path in files.items()}

    from dogcat.preprocessing import DECODE_CONCURRENCY, MAX_DECODE_BYTES

    n = args.sessions
    rows = [
        ("server started, before any page", f"{readings['started']['VmRSS']:.0f} MiB", "-"),
        ("after one warm-up prediction (model loaded)", f"{readings['warm']['VmRSS']:.0f} MiB", f"{readings['warm']['VmHWM']:.0f} MiB"),
        (f"{n} sessions upload the tester's {tester_size[0]}x{tester_size[1]} RGB PNG ({sizes['tester'] / 1e3:.0f} KB) at once",
         f"{readings['tester']['VmRSS']:.0f} MiB", f"{readings['tester']['VmHWM']:.0f} MiB"),
        (f"1 session uploads the worst accepted file, a {worst_size[0]}x{worst_size[1]} palette PNG with transparency "
         f"({sizes['worst'] / 1e3:.0f} KB)", f"{readings['one']['VmRSS']:.0f} MiB", f"{readings['one']['VmHWM']:.0f} MiB"),
        (f"{n} sessions upload that file at once", f"{readings['worst']['VmRSS']:.0f} MiB",
         f"{readings['worst']['VmHWM']:.0f} MiB"),
    ]
    table = "| moment | RSS | peak RSS so far (VmHWM) |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    body = (
        f"{table}\n\nTester's file: every page answered `{tester_outcomes[0]}` ({len(set(tester_outcomes))} distinct "
        f"answers, {tester_seconds:.1f} s for all {n}). Worst accepted file: `{worst_outcomes[0]}` "
        f"({len(set(worst_outcomes))} distinct answers; {one_seconds:.1f} s for one session, {worst_seconds:.1f} s "
        f"for all {n}). Decodes are bounded per image (MAX_DECODE_BYTES = {MAX_DECODE_BYTES // 2**20} MiB) and per "
        f"process (DECODE_CONCURRENCY = {DECODE_CONCURRENCY}): {n} sessions at once raised the peak by "
        f"{readings['worst']['VmHWM'] - readings['warm']['VmHWM']:.0f} MiB over the warm server, one session by "
        f"{readings['one']['VmHWM'] - readings['warm']['VmHWM']:.0f} MiB. Before the fix, the tester measured "
        "7.8 GB for the 118 MP file from 10 tabs."
    )
    print(body)
    write_section("Decode memory under concurrent uploads", f"python benchmarks/decode_memory.py --sessions {n}",
                  body, ("streamlit", "pillow", "keras", "tensorflow-cpu"))


if __name__ == "__main__":
    main()
