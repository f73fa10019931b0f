"""Test and lint sessions: `nox -s tests` runs the suite once per Keras backend."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
BACKENDS = ["tensorflow"]


def _install_and_test(session: nox.Session, backend: str) -> None:
    session.install("-e", f".[{backend},streamlit]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs, env={"KERAS_BACKEND": backend})


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite on one Keras backend."""
    _install_and_test(session, backend)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".", *session.posargs)
