"""One error family, one exit path (dogcat.errors): every failure a user can cause is one line and an exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dogcat.artifacts import ArtifactError, ArtifactWriteError
from dogcat.batch import JobStopped
from dogcat.cli import main
from dogcat.config import ConfigError
from dogcat.data import DataError
from dogcat.errors import DogcatError, UsageError
from dogcat.onnx_graph import UnsupportedLayer
from dogcat.preprocessing import ImageError
from dogcat.space import SpaceError
from dogcat.train import TrainError
from dogcat.tune import TuneError
from tests.helpers import REPO

OLD_BASES = {ArtifactError: ValueError, ArtifactWriteError: ValueError, ConfigError: ValueError, DataError: ValueError,
             ImageError: ValueError, SpaceError: ValueError, UnsupportedLayer: ValueError, UsageError: ValueError,
             TrainError: RuntimeError, TuneError: RuntimeError, JobStopped: RuntimeError}


@pytest.mark.parametrize("error", OLD_BASES, ids=lambda e: e.__name__)
def test_every_domain_error_is_a_dogcat_error_and_keeps_its_builtin_base(error):
    assert issubclass(error, DogcatError)
    assert issubclass(error, OLD_BASES[error])
    assert error.exit_code == (1 if error is JobStopped else 2)  # a stopped job leaves its rows, as failed files do


def test_evaluate_on_photos_none_of_which_can_be_read_is_one_line(tmp_path, tiny_model_dir, capsys):
    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / f"{label}.0.jpg").write_text("not a photo")
    code = main(["evaluate", str(tiny_model_dir / "dog_cat_classifier.keras"), str(tmp_path / "data"), "--split", "all"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1:] == [f"dogcat: error: None of the 2 images could be read. Received: data_dir={str(tmp_path / 'data')!r}"]
    assert all(line.startswith("dogcat: warning: ") for line in err[:-1])  # the tiny model has no detector


# Runs `dogcat ARGS` with the named top-level modules made impossible to import, as when their extra is not installed.
BLOCKED_RUN = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
BLOCKED = sys.argv[1].split(",")
sys.meta_path.insert(0, Missing())
from dogcat.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _without(modules: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, modules, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def _names_the_extra(result: subprocess.CompletedProcess, module: str, extra: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f'dogcat: error: This command needs {module}, which is not installed: pip install "dogcat-verdict[{extra}]" '
        f'(in dogcat\'s checkout: pip install ".[{extra}]"). Received: missing={extra if extra != "tune" else "optuna"!r}']


@pytest.mark.parametrize("args", [["train"], ["tune"], ["export", "--out", "x.onnx"], ["detector", "fit", "m", "d"],
                                  ["predict", "--runtime", "keras", "demos/examples/cat-chelsea.jpg"]],
                         ids=lambda a: a[0])
def test_a_keras_command_without_its_backend_names_the_extra_in_one_line(args, tmp_path):
    import keras

    backend = keras.config.backend()  # tensorflow, or jax in the JAX session: the extra is named after either
    args = [str(tmp_path / a) if a in ("x.onnx", "m", "d") else a for a in args]
    _names_the_extra(_without(backend, *args), {"tensorflow": "TensorFlow", "jax": "JAX"}[backend], backend)


@pytest.mark.parametrize(("module", "extra", "args"), [
    ("Optuna", "tune", ["tune", "--trials", "1"]),
    ("Ray", "ray", ["batch", "demos/examples", "--out", "OUT"]),
    ("Gradio", "gradio", ["demo"]),
    ("Streamlit", "streamlit", ["app"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_command_without_its_extra_names_the_extra_in_one_line(module, extra, args, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    if extra == "tune":
        args += ["--out", str(tmp_path / "search")]
    top = "optuna" if extra == "tune" else extra
    _names_the_extra(_without(top, *args), module, extra)
    assert not (tmp_path / "out").exists()  # refused before any work
    assert not (tmp_path / "search").exists()
