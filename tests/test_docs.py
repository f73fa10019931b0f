"""The documents and messages never tell anyone to install somebody else's program.

`dogcat` on PyPI is an unrelated package with its own `dogcat` command; this project's distribution
is `dogcat-verdict` and is not published, so every install line must work from the checkout (or a
wheel built from it), or name a dependency itself (`pip install 'optuna>=4'`).
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

# `pip install dogcat`, `pip install "dogcat[ray]"`, `uv pip install -U 'dogcat>=0.1'`: a bare name an index would resolve.
BARE_INSTALL = re.compile(r"""pip\s+install\s+(?:-\S+\s+)*["']?dogcat(?:\[[^\]]*\])?(?:[<>=!~][^\s"']*)?["']?(?=[\s`)'"]|$)""")


def bare_installs(text: str) -> list[str]:
    return [match.group(0) for match in BARE_INSTALL.finditer(text)]


def test_the_pattern_finds_what_an_index_would_resolve_and_nothing_else():
    assert bare_installs('pip install "dogcat[ray]" && x') == ['pip install "dogcat[ray]"']
    assert bare_installs("python -m pip install -U dogcat") == ["pip install -U dogcat"]
    assert bare_installs("pip install 'dogcat>=0.1'") == ["pip install 'dogcat>=0.1'"]
    assert bare_installs('pip install ".[ray]"; pip install dogcat-verdict[ray]; pip install ./dist/dogcat_verdict.whl') == []


DOCUMENTS = sorted({REPO / "README.md", REPO / "models" / "README.md", *REPO.glob("docs/*.md"),
                    *REPO.glob("dogcat/*.py"), *REPO.glob("demos/*.py")})


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_install_line_fetches_a_bare_dogcat_from_an_index(path):
    assert bare_installs(path.read_text(encoding="utf-8")) == []


def test_ci_runs_exactly_the_readmes_test_command():
    setup = (REPO / "README.md").read_text(encoding="utf-8").split("## Set up a fresh machine", 1)[1].split("\n## ", 1)[0]
    main_job, tests = re.findall(r"```bash\n(.+?)\n```", setup, re.S)
    assert "nox" in tests
    assert tests in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert main_job.endswith("dogcat app")
    assert "tensorflow" not in main_job  # serving the shipped model needs ONNX Runtime only


def test_every_documented_column_list_is_the_rows_own():
    """README and docs list the columns of `predict --csv` and batch's Parquet: those of Prediction.as_row."""
    from dogcat.verdict import row_columns

    listed = [[name.strip() for name in text.split(",")] for path in (REPO / "README.md", *REPO.glob("docs/*.md"))
              for text in re.findall(r"`(path,[^`]*)`", path.read_text(encoding="utf-8"))]
    assert len(listed) >= 2
    for columns in listed:
        assert columns in (row_columns(["cat", "dog"]), [*row_columns(["cat", "dog"]), "node"]), columns
