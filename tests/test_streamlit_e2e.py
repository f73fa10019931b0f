"""End to end: `dogcat app` in a real headless Chromium, driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REAL_CAT, REAL_DOG, REPO

CHROMIUM = os.environ.get("DOGCAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    port = _free_port()
    dogcat = shutil.which("dogcat")
    command = [dogcat] if dogcat else [sys.executable, "-m", "dogcat"]
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen([*command, "app", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dogcat app did not start: {(tmp_path / 'app.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.shared_data
def test_browser_upload_gives_labels_and_a_readable_error(app_url, shared_data, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes((shared_data / REAL_CAT).read_bytes()[:3000])
    screenshot = Path(os.environ.get("DOGCAT_SCREENSHOT", tmp_path / "streamlit.png"))
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1200})
            page.goto(app_url)
            uploader = page.locator('input[type="file"]')
            uploader.wait_for(state="attached", timeout=60_000)
            uploader.set_input_files([shared_data / REAL_CAT, shared_data / REAL_DOG])
            headings = page.locator('[data-testid="stHeading"] h3')
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=\"stHeading\"] h3').length >= 2", timeout=90_000
            )
            assert [text.strip() for text in headings.all_inner_texts()] == ["cat", "dog"]

            uploader.set_input_files([corrupt])
            error = page.locator('[data-testid="stAlertContentError"]')
            error.wait_for(timeout=60_000)
            assert error.inner_text().startswith("corrupt.jpg: truncated")
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=\"stHeading\"] h3').length >= 2", timeout=30_000
            )
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
