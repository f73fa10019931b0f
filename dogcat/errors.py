"""What can go wrong, as one family: every error dogcat raises for a user derives from DogcatError.

The command line catches DogcatError once (`cli._main`) and prints its one-line message with
`exit_code`; a new error class needs no new handler. Each subclass also keeps the builtin base it had
before (ValueError, RuntimeError), so a caller's `except ValueError` still catches it.
"""

from __future__ import annotations


class DogcatError(Exception):
    """An error whose message is one line, fit for users; the command line exits with `exit_code`."""

    exit_code = 2  # as argparse exits on bad usage


class UsageError(DogcatError, ValueError):
    """Flags that do not fit together, or a value out of range, found after argparse."""


# Optional dependency's top-level module -> (what it is, the extra of dogcat-verdict that installs it).
EXTRAS = {"tensorflow": ("TensorFlow", "tensorflow"), "jax": ("JAX", "jax"), "optuna": ("Optuna", "tune"),
          "ray": ("Ray", "ray"), "gradio": ("Gradio", "gradio"), "streamlit": ("Streamlit", "streamlit"),
          "fastapi": ("FastAPI", "serve"), "uvicorn": ("uvicorn", "serve"),
          "prometheus_client": ("prometheus-client", "serve"), "python_multipart": ("python-multipart", "serve")}


class MissingDependency(DogcatError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    @classmethod
    def of(cls, error: ModuleNotFoundError) -> MissingDependency | None:
        """The one-line form of `error` when it is an extra's module that is missing, else None (a real bug)."""
        module = (error.name or "").split(".")[0]
        if module not in EXTRAS:
            return None
        what, extra = EXTRAS[module]
        # pip resolves an installed distribution's extra from its own metadata: no index needed for dogcat itself.
        return cls(f"This command needs {what}, which is not installed: pip install \"dogcat-verdict[{extra}]\" "
                   f"(in dogcat's checkout: pip install \".[{extra}]\"). Received: missing={module!r}")
