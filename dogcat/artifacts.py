"""Reading and writing run artifacts: atomic writes, and a class-names loader that runs no code.

`class_names.pkl` is a pickle because the product promises one, but an ordinary `pickle.load`
executes whatever the file tells it to. `load_class_names` uses an unpickler that can build
only plain containers and scalars, then checks that the result is a dict of int -> str.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CLASS_NAMES = {0: "cat", 1: "dog"}
MODEL_FILENAME = "dog_cat_classifier.keras"
CLASS_NAMES_FILENAME = "class_names.pkl"
ONNX_FILENAME = "dog_cat_classifier.onnx"  # written by `dogcat export` beside the .keras


class ArtifactError(ValueError):
    """A model or class-names file that is missing, malformed or unsafe."""


def bundled_file(folder: str, name: str) -> Path | None:
    """A file the project ships outside the package (models/, demos/).

    Wheels carry these folders inside the package as `_<folder>`; a source checkout or an
    editable install has them beside the package.
    """
    for root in (PACKAGE_DIR / f"_{folder}", PACKAGE_DIR.parent / folder):
        if (root / name).is_file():
            return root / name
    return None


def load_model_card(model_path: str | Path) -> dict:
    """The measurements `dogcat train` and `dogcat evaluate` left beside a model, if any.

    Returns {"training": {...}, "test": {...}} with whichever of training.json and
    test_metrics.json exist; apps show these numbers instead of typing them in.
    """
    folder = Path(model_path).parent
    card = {}
    for key, filename in (("training", "training.json"), ("test", "test_metrics.json")):
        path = folder / filename
        if path.is_file():
            try:
                card[key] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a damaged card is not worth failing the app over
    return card


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    A crash mid-write leaves the old file (or none), never a half-written one. The temporary
    name ends with the real name, since Keras picks the format from suffixes like .weights.h5.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f".{path.name}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def save_atomic(path: str | Path, save: Callable[[Path], object]) -> None:
    """Run `save(tmp_path)` (e.g. `model.save`, `figure.savefig`) and move the result into place."""
    with atomic_path(path) as tmp:
        save(tmp)


def save_class_names(path: str | Path, class_names: dict[int, str] = CLASS_NAMES) -> None:
    _validate_class_names(class_names, path)
    write_bytes_atomic(path, pickle.dumps(dict(class_names), protocol=4))


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, str, int, float, bool and None; refuses every global."""

    def find_class(self, module: str, name: str):
        raise ArtifactError(f"refusing to load {module}.{name}: class_names.pkl may only hold a dict of int -> str")


def load_class_names(path: str | Path) -> dict[int, str]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Class names file not found. Received: path={str(path)!r}")
    try:
        names = _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
    except ArtifactError as error:
        raise ArtifactError(f"{error}. Received: path={str(path)!r}") from None
    except Exception as error:  # any malformed pickle: report it, never execute it
        raise ArtifactError(f"Class names file is not a valid pickle ({error}). Received: path={str(path)!r}") from None
    return _validate_class_names(names, path)


def _validate_class_names(names: object, path: str | Path) -> dict[int, str]:
    valid = (
        isinstance(names, dict)
        and len(names) >= 2
        and all(type(k) is int and isinstance(v, str) for k, v in names.items())
        and sorted(names) == list(range(len(names)))
    )
    if not valid:
        raise ArtifactError(
            f"Class names must be a dict mapping 0..N-1 to str. Received: {str(path)!r} holding {names!r:.200}"
        )
    return dict(names)
