"""Reading and writing run artifacts: atomic writes, and a class-names loader that runs no code.

`class_names.pkl` is a pickle because the product promises one, but an ordinary `pickle.load`
executes whatever the file tells it to. `load_class_names` uses an unpickler that can build
only plain containers and scalars, then checks that the result is a dict of int -> unique str.
The file's size and the result's nesting are bounded first: a tiny pickle can nest lists deeply
enough to crash anything recursive (repr, ==) with a RecursionError.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from dogcat.errors import DogcatError

PACKAGE_DIR = Path(__file__).resolve().parent
CLASS_NAMES = {0: "cat", 1: "dog"}
MODEL_FILENAME = "dog_cat_classifier.keras"
CLASS_NAMES_FILENAME = "class_names.pkl"
ONNX_FILENAME = "dog_cat_classifier.onnx"  # written by `dogcat export` beside the .keras
INT8_ONNX_FILENAME = "dog_cat_classifier.int8.onnx"  # `dogcat export --int8`: the bulk runtime (dogcat.export)
DETECTOR_FILENAME = "dog_cat_detector.npz"  # the "neither" detector (dogcat.detector) beside the .keras
# MobileNetV2's ImageNet-1k classifier layer (tools/derive_imagenet_head.py): shipped in models/, read by the detector
IMAGENET_HEAD_FILENAME = "imagenet_head.npz"
# Beside the model, in the format `sha256sum` writes (so `sha256sum -c SHA256SUMS` checks a folder by
# hand too): the ONNX twins' own hashes. Their metadata ties them to the .keras, but a protobuf has
# no checksum of its own, and a damaged weight still loads and flips labels.
CHECKSUMS_FILENAME = "SHA256SUMS"
MAX_CHECKSUMS_BYTES = 64 * 1024  # a line per artifact: a few hundred bytes
# Which of those files scores photos (dogcat.inference). Kept here, in a module without NumPy, so
# the CLI can offer the choices without importing the inference stack for every command.
RUNTIMES = ("auto", "keras", "onnx", "onnx-int8")
BATCH_RUNTIMES = ("onnx", "onnx-int8")  # dogcat.batch's actors run ONNX Runtime: no Keras backend on the nodes
# A real class_names.pkl is ~40 bytes and one level deep; these leave room and still bound the work.
MAX_CLASS_NAMES_BYTES = 64 * 1024
MAX_CLASS_NAMES_DEPTH = 8


_INTERRUPTED = threading.Event()


def note_interrupt(signum=None, frame=None) -> None:
    """A SIGINT handler (the `dogcat` command installs it): Python's own behaviour, KeyboardInterrupt,
    plus a note that it happened. An interrupt that lands inside a C extension's import (ONNX
    Runtime's) can come out as an ImportError; `interrupt_requested` lets a loader tell the two apart."""
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def interrupt_requested() -> bool:
    return _INTERRUPTED.is_set()


class ArtifactError(DogcatError, ValueError):
    """A model or class-names file that is missing, malformed or unsafe."""


class ArtifactWriteError(ArtifactError):
    """An artifact could not be written (disk full, no permission); the message names the file.

    A bare OSError from deep inside h5py or Keras says neither which file nor, often, that the
    disk is full; the command line prints this one line instead of a traceback.
    """


def _write_error(path: Path, error: BaseException) -> ArtifactWriteError:
    if isinstance(error, OSError) and error.errno:  # h5py's strerror is HDF5's multi-line report
        reason = f"{os.strerror(error.errno)} (errno {error.errno})"
    else:
        lines = str(error).strip().splitlines()
        reason = lines[0][:200] if lines else type(error).__name__
    return ArtifactWriteError(f"Could not write {path}: {reason}. Received: path={str(path)!r}")


def bundled_file(folder: str, name: str) -> Path | None:
    """A file the project ships outside the package (models/, demos/).

    Wheels carry these folders inside the package as `_<folder>`; a source checkout or an
    editable install has them beside the package.
    """
    for root in (PACKAGE_DIR / f"_{folder}", PACKAGE_DIR.parent / folder):
        if (root / name).is_file():
            return root / name
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    A crash mid-write leaves the old file (or none), never a half-written one. The temporary
    name ends with the real name, since Keras picks the format from suffixes like .weights.h5.
    """
    path = Path(path)
    tmp_path = _temporary_beside(path)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    except OSError as error:  # disk full, read-only, no permission: say which file
        raise _write_error(path, error) from error
    finally:
        tmp_path.unlink(missing_ok=True)


def _temporary_beside(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f".{path.name}")
    except OSError as error:
        raise _write_error(path, error) from error
    os.close(fd)
    return Path(tmp)


def save_all_atomic(saves: dict[Path, Callable[[Path], object]]) -> None:
    """Like `save_atomic` for files that must change together: every file is written to its
    temporary name first and only then are all renamed, in order, so a failed write (a full
    disk) leaves all of them as they were. Put the file that commits the others last.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, save in saves.items():
            path = Path(path)
            staged.append((_temporary_beside(path), path))
            try:
                save(staged[-1][0])
                os.chmod(staged[-1][0], 0o666 & ~_umask())
            except OSError as error:
                raise _write_error(path, error) from error
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as error:
                raise _write_error(path, error) from error
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


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


def strict_json(value, indent: int | None = None) -> str:
    """`json.dumps` that only writes strict JSON: a non-finite float (a NaN loss, a damaged model)
    becomes null, since bare `NaN` is not JSON and strict parsers (jq, JavaScript) refuse the whole document."""
    def finite(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(v) for key, v in item.items()}
        if isinstance(item, list | tuple):
            return [finite(v) for v in item]
        return item

    return json.dumps(finite(value), indent=indent, allow_nan=False)


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
    size = path.stat().st_size
    if size > MAX_CLASS_NAMES_BYTES:
        raise ArtifactError(
            f"Class names file is too large ({size} bytes; at most {MAX_CLASS_NAMES_BYTES}). Received: path={str(path)!r}"
        )
    try:
        names = _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
    except ArtifactError as error:
        raise ArtifactError(f"{error}. Received: path={str(path)!r}") from None
    except Exception as error:  # any malformed pickle: report it, never execute it
        raise ArtifactError(f"Class names file is not a valid pickle ({error}). Received: path={str(path)!r}") from None
    if _nesting_depth(names) > MAX_CLASS_NAMES_DEPTH:
        raise ArtifactError(
            f"Class names file nests containers more than {MAX_CLASS_NAMES_DEPTH} deep. Received: path={str(path)!r}"
        )
    return _validate_class_names(names, path)


def _nesting_depth(value: object) -> int:
    """How deeply containers nest in `value`, found without recursion (so any depth is measurable)."""
    deepest, seen = 0, set()
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list | tuple | set | frozenset) or id(item) in seen:
            continue
        seen.add(id(item))  # a self-referencing list is a cycle, not infinite depth
        deepest = max(deepest, depth)
        if deepest > MAX_CLASS_NAMES_DEPTH:
            break
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _validate_class_names(names: object, path: str | Path) -> dict[int, str]:
    valid = (
        isinstance(names, dict)
        and len(names) >= 2
        and all(type(k) is int and isinstance(v, str) and v.strip() for k, v in names.items())
        and sorted(names) == list(range(len(names)))
        and len(set(names.values())) == len(names)  # two classes called "cat" would merge their probabilities
    )
    if not valid:
        raise ArtifactError(
            "Class names must be a dict mapping 0..N-1 to unique non-empty str. "
            f"Received: {str(path)!r} holding {_short_repr(names)}"
        )
    return dict(names)


def _short_repr(value: object, limit: int = 200) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__}>"
    return text[:limit]


def record_checksum(path: str | Path) -> None:
    """Add or replace `path`'s line in the SHA256SUMS beside it."""
    path = Path(path)
    listed = _read_checksums(path.with_name(CHECKSUMS_FILENAME))
    listed[path.name] = file_sha256(path)
    write_text_atomic(path.with_name(CHECKSUMS_FILENAME), "".join(f"{digest}  {name}\n" for name, digest in sorted(listed.items())))


def checksum_problem(path: str | Path) -> str | None:
    """Why `path` does not match its line in the SHA256SUMS beside it, or None (it matches, or is not listed)."""
    path = Path(path)
    expected = _read_checksums(path.with_name(CHECKSUMS_FILENAME)).get(path.name)
    if expected is None or expected == file_sha256(path):
        return None
    return f"{path} does not match its sha256 in {path.with_name(CHECKSUMS_FILENAME)} (damaged or replaced)"


def _read_checksums(path: Path) -> dict[str, str]:
    """{file name: sha256} from a SHA256SUMS file; lines that are not `<64 hex>  <name>` are ignored."""
    try:
        text = path.read_text(encoding="utf-8") if path.stat().st_size <= MAX_CHECKSUMS_BYTES else ""
    except OSError:
        return {}
    listed = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) and name and "/" not in name:
            listed[name.lstrip("*")] = digest
    return listed
