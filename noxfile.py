"""Test and lint sessions: `nox -s tests` runs the suite once per Keras backend."""

from __future__ import annotations

import nox

# uv installs the three environments (TensorFlow, JAX, both) in seconds where pip takes minutes;
# plain venv + pip when uv is missing.
nox.options.default_venv_backend = "uv|venv"
nox.options.reuse_venv = "yes"

PYPROJECT = nox.project.load_toml("pyproject.toml")
nox.options.sessions = ["lint", "tests", "portability", "bulk", "tune"]
BACKENDS = ["tensorflow", "jax"]


def _install_and_test(session: nox.Session, extras: str, env: dict[str, str], *pytest_args: str,
                      extra_packages: tuple[str, ...] = ()) -> None:
    session.install("-e", f".[{extras}]", *nox.project.dependency_groups(PYPROJECT, "test"), *extra_packages)
    session.run("pytest", *pytest_args, *session.posargs, env=env)


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite on one Keras backend (the JAX environment has no TensorFlow)."""
    env = {"KERAS_BACKEND": backend}
    if backend == "jax":
        env["DOGCAT_EXPECT_NO_TENSORFLOW"] = "1"
    extras = f"{backend},streamlit,gradio,serve"
    _install_and_test(session, extras, env, "-m", "not portability and not tune and not bulk")


@nox.session
def portability(session: nox.Session) -> None:
    """Save models on one backend and load them on the other, one process per backend."""
    _install_and_test(session, "tensorflow,jax", {"DOGCAT_REQUIRE_BOTH_BACKENDS": "1"}, "-m", "portability")


@nox.session
def bulk(session: nox.Session) -> None:
    """Bulk work (the ray extra): the int8 twin's contract on real photos and `dogcat batch` on a Ray
    cluster the tests start; ONNX Runtime only, so no Keras backend is installed."""
    # Only its own files: the rest of the suite imports Keras, which has no backend here.
    # moto's S3 server stands in for a bucket (the s3:// test), on 127.0.0.1.
    _install_and_test(session, "ray,serve", {}, "tests/test_int8.py", "tests/test_batch.py", "tests/test_serve.py", "-m", "bulk", extra_packages=("moto[server]>=5",))


@nox.session
def tune(session: nox.Session) -> None:
    """`dogcat tune` (Optuna, the tune extra): a search, its resume and its written config, on tiny data."""
    _install_and_test(session, "tensorflow,tune", {"KERAS_BACKEND": "tensorflow"}, "-m", "tune")


@nox.session
def mutations(session: nox.Session) -> None:
    """Break the code on purpose (tests/mutations.py) and check the tests catch each break; on demand only."""
    session.install("-e", ".[tensorflow,tune,ray]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("python", "tests/mutations.py", *session.posargs, env={"KERAS_BACKEND": "tensorflow"})


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".", *session.posargs)
