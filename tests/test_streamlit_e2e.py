"""End to end: `dogcat app` in a real headless Chromium, driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import REAL_CAT, REAL_DOG, REPO
from tests.servers import free_port, serving

CHROMIUM = os.environ.get("DOGCAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
README_SCREENSHOT = REPO / "docs" / "streamlit.png"
# What the picture shows, as the README's alt text says it: the last state of the test below.
SCREENSHOT_ALT = ("The Streamlit app: a cat, a dog, a rocket (neither) and a WebP cat classified, each with where "
                  "it looked, and a corrupt upload reported in one line")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}"),
]


@pytest.fixture
def app_url(tmp_path):
    port = free_port()
    dogcat = shutil.which("dogcat")
    command = [dogcat] if dogcat else [sys.executable, "-m", "dogcat"]
    url = f"http://127.0.0.1:{port}"
    with serving([*command, "app", "--port", str(port)], f"{url}/_stcore/health", tmp_path / "app.log", 90, cwd=REPO):
        yield url


@pytest.mark.shared_data
def test_browser_upload_gives_labels_and_a_readable_error(app_url, shared_data, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes((shared_data / REAL_CAT).read_bytes()[:3000])
    # By default the README's own picture: each run of this test redraws it from the real app, so it
    # cannot show a page that no longer exists (DOGCAT_SCREENSHOT=PATH writes it elsewhere).
    screenshot = Path(os.environ.get("DOGCAT_SCREENSHOT", README_SCREENSHOT))
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
            assert [text.strip() for text in headings.all_inner_texts()] == ["Cat", "Dog"]

            uploader.set_input_files([REPO / "demos" / "examples" / "rocket.jpg"])
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=\"stHeading\"] h3')]"
                ".some(h => h.innerText.trim() === 'Neither a cat nor a dog')", timeout=60_000
            )
            # Under each verdict (the rocket's, and the cat's and dog's breeds), what ImageNet's classes see, as a hint.
            # Counted once the rerun has finished: until then a hint can be drawn before its caption.
            page.wait_for_function(
                "() => !document.querySelector('[data-stale=\"true\"], [data-testid=\"stSpinner\"]')", timeout=60_000
            )
            hints = page.get_by_text(re.compile(r"^Looks like an? .+ \(\d+%\)$")).count()
            assert hints >= 1
            assert page.get_by_text("A general photo recognizer's guess at what it shows: a hint, not a claim.").count() == hints

            # A WebP, which the uploader once refused with a hover-only icon: classified like a JPEG.
            from PIL import Image

            webp = tmp_path / "chelsea.webp"
            Image.open(REPO / "demos" / "examples" / "cat-chelsea.jpg").save(webp, format="WEBP")
            uploader.set_input_files([webp])
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=\"stHeading\"] h3')]"
                ".some(h => h.innerText.trim() === 'Cat')", timeout=60_000
            )

            uploader.set_input_files([corrupt])
            error = page.locator('[data-testid="stAlertContentError"]')
            error.wait_for(timeout=60_000)
            assert error.inner_text().startswith("corrupt.jpg: truncated")
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=\"stHeading\"] h3').length >= 2", timeout=30_000
            )
            photos = page.locator('[data-testid="stImage"]').count()
            page.get_by_text("Show where it looked").click()  # the sidebar toggle: a heatmap beside each photo
            looked = page.get_by_text("Where it looked for a ")
            page.wait_for_function(
                f"() => document.querySelectorAll('[data-testid=\"stImage\"]').length >= {2 * photos}", timeout=60_000
            )
            assert looked.count() == photos
            # Wait for the rerun to finish: until then the previous run's elements stay on the page,
            # faded ("stale"), and the screenshot would show both.
            page.wait_for_function(
                "() => !document.querySelector('[data-stale=\"true\"], [data-testid=\"stSpinner\"]')", timeout=60_000
            )
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
