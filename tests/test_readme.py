"""Every shell line in the README runs as printed: a newcomer pastes them.

Each line of each ```bash block is checked by bash itself (`bash -n`), each `dogcat` command in it
by dogcat's own argument parser, and each path into this checkout it names must exist. The cheap
ones, which need nothing but the checkout, are run as printed, from a fresh folder; the rest need
what a newcomer brings (their photos, a dataset, a cluster, a bucket) and are run by the tests
of those features (the cluster recipe by tests/test_batch.py, the serve lines by tests/test_serve.py).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

README = REPO / "README.md"
MAX_LINES = 250  # a user's page: the design and the measurements live in docs/
# Lines that need only this checkout and the shipped model, run as printed (a few seconds each).
CHEAP = ("dogcat predict ",)
# Top-level folders of the checkout: a path under one of these must exist as printed.
CHECKOUT = {path.name for path in REPO.iterdir() if not path.name.startswith(".")} | {".ci"}


def shell_lines(text: str) -> list[str]:
    """The command lines of the ```bash blocks, as printed (comment-only and blank lines left out)."""
    blocks = re.findall(r"^ *```bash\n(.*?)^ *```", text, re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def commands(line: str) -> list[list[str]]:
    """The simple commands of a line (split at &&, ||, ;, |), as words, comments and redirections left out."""
    words = shlex.split(line, comments=True)
    found, current, target = [], [], False
    for word in words:
        if target:  # the file of a redirection
            target = False
        elif word in ("&&", "||", ";", "|"):
            found.append(current)
            current = []
        elif word in (">", ">>", "<", "2>"):
            target = True
        elif not word.startswith((">", "<", "2>")):
            current.append(word)
    return [command for command in [*found, current] if command]


LINES = shell_lines(README.read_text(encoding="utf-8"))


def test_the_readme_is_a_users_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_LINES
    assert len(LINES) >= 20  # the extraction found the README's commands


def test_the_extraction_reads_lines_as_bash_does():
    assert shell_lines("x\n```bash\n# a comment\ndogcat predict a.jpg   # why\n\n  ray start --head\n```\n```python\nprint()\n```") \
        == ["dogcat predict a.jpg   # why", "ray start --head"]
    assert commands('python3 -m venv .venv && .venv/bin/dogcat app  # the app') == [
        ["python3", "-m", "venv", ".venv"], [".venv/bin/dogcat", "app"]]
    assert commands("ray get-auth-token --generate > /dev/null") == [["ray", "get-auth-token", "--generate"]]


@pytest.mark.parametrize("line", LINES)
def test_each_line_parses_and_names_files_that_exist(line):
    from dogcat.cli import _parser

    checked = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    for command in commands(line):
        program = Path(command[0]).name
        if program == "dogcat":  # flags and sub-commands as dogcat's parser reads them
            try:
                _parser().parse_args(command[1:])
            except SystemExit as stop:
                pytest.fail(f"dogcat's parser refuses {shlex.join(command)!r} (exit {stop.code})")
        for word in command[1:]:
            path = word.split("=", 1)[-1].split("[", 1)[0].strip("'\"")
            top = path.split("/", 1)[0]
            if "/" in path and top in CHECKOUT and "://" not in path and not path.startswith("dist/"):
                assert glob.glob(str(REPO / path), recursive=True), f"{line!r} names {path}, which is not in the checkout"


@pytest.mark.parametrize("line", [line for line in LINES if line.startswith(CHEAP)])
def test_the_cheap_lines_run_as_printed(line, tmp_path):
    """From a fresh folder holding the checkout's demos (what the lines name), with `dogcat` on PATH."""
    (tmp_path / "demos").symlink_to(REPO / "demos", target_is_directory=True)
    dogcat = shutil.which("dogcat") or str(Path(sys.executable).with_name("dogcat"))
    env = {**os.environ, "PATH": f"{Path(dogcat).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, (line, ran.stderr[-2000:])
    assert ran.stdout.strip(), line
    if "--explain" in line:  # `--explain out/explain` in a folder without out/: made, and a PNG in it
        folder = shlex.split(line)[shlex.split(line).index("--explain") + 1]
        assert list((tmp_path / folder).glob("*.png")), ran.stderr[-2000:]


def test_the_readmes_screenshot_is_the_one_the_browser_test_draws():
    from tests.test_streamlit_e2e import README_SCREENSHOT, SCREENSHOT_ALT

    relative = README_SCREENSHOT.relative_to(REPO).as_posix()
    assert f"![{SCREENSHOT_ALT}]({relative})" in README.read_text(encoding="utf-8")
    assert README_SCREENSHOT.is_file()
