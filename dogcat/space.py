"""Build a Hugging Face Space (Gradio SDK) folder that can be pushed as it is.

`build_space(OUT)` writes:

    OUT/app.py             the Gradio demo (a copy of demos/gradio_app.py: one app, not two)
    OUT/dogcat/            this package's source, vendored, so no dogcat release is needed
    OUT/models/            the model, its class names and the metrics files found beside it
    OUT/examples/          the demo's example photos and their licences
    OUT/requirements.txt   the versions installed here, pinned: with a matching ONNX export beside
                           the model, only Gradio, ONNX Runtime, Pillow (with pillow-heif) and NumPy (no TensorFlow);
                           otherwise Keras and CPU-only TensorFlow as well
    OUT/README.md          Spaces front matter + a model card whose numbers are read from files (dogcat.card)
    OUT/.gitattributes     Git LFS rules for the binary files, for a `git push` of the folder

The vendored package finds the model at OUT/models/ the way a source checkout finds models/, so
app.py needs no path of its own.

It never deletes what it did not write. Each build lists its files in OUT/.dogcat-space.json, and
a rebuild replaces only the files listed there, keeping everything else (.git, the user's notes).
The marker is pushed with the Space on purpose: a rebuild in another clone of it needs to know
which files the last build wrote (it holds file names and the dogcat version, nothing private).
Without that marker OUT must be empty, or a fresh clone of a Space: .git, .gitattributes and the
Hub's generated README.md (front matter and its one "configuration reference" line), which the
build's README replaces.

Nor does it follow a symlink. A Space folder is a git clone, git stores symlinks and the marker
travels with the clone, so `cfg -> ../victim` and a marker listing `cfg/id_rsa` can arrive
together. The build never writes a symlink, so any symlink on the way to a file it would delete
or write is refused, and the build stops before touching anything.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
import tempfile
from pathlib import Path

from dogcat import __version__
from dogcat.artifacts import bundled_file, load_class_names, write_text_atomic
from dogcat.card import space_readme
from dogcat.errors import DogcatError
from dogcat.model_folder import ModelFolder
from dogcat.runtimes import OnnxRunner, onnx_runner_for

PACKAGE_DIR = Path(__file__).resolve().parent
APP_FILENAME = "gradio_app.py"
# Folders a wheel carries inside the package (see dogcat.artifacts.bundled_file): not vendored.
NOT_VENDORED = ("__pycache__", "*.pyc", "_models", "_demos")
# What the Space installs, pinned to the versions installed (and tested) here.
# tensorflow-cpu: a Space has no GPU, and the CPU wheel is a fraction of the size.
# A model with a matching ONNX twin (`dogcat export`) is served by ONNX Runtime, which needs
# neither Keras nor TensorFlow: the Space installs only what that path imports.
ONNX_REQUIREMENTS = ("gradio", "onnxruntime", "pillow", "pillow-heif", "numpy")
# Without one, the Space runs the .keras model itself.
REQUIREMENTS = ("gradio", "keras", "tensorflow-cpu", "onnxruntime", "pillow", "pillow-heif", "numpy", "tqdm", "matplotlib")
LFS_PATTERNS = ("*.keras", "*.onnx", "*.npz", "*.pkl", "*.png", "*.jpg")  # the Hub refuses binaries outside LFS
# Lists the files a build wrote, so that the next build replaces exactly those and nothing else.
MARKER_FILENAME = ".dogcat-space.json"
STAGING_PREFIX = ".dogcat-space-"
# What a fresh `git clone` of a new Space holds; a folder with only these may be built into.
CLONE_ENTRIES = (".git", ".gitattributes")
HUB_README_LINE = "Check out the configuration reference at https://huggingface.co/docs/hub/spaces-config-reference"



class SpaceError(DogcatError, ValueError):
    """The Space cannot be built: a missing app, model or package. The message says which."""


def find_gradio_app() -> Path:
    """Path of the Gradio app (demos/gradio_app.py): beside the package, or inside a wheel as _demos/."""
    app = bundled_file("demos", APP_FILENAME)
    if app is None:
        raise SpaceError(f"The Gradio app (demos/{APP_FILENAME}) is missing from this installation.")
    return app


def pinned_requirements(names: tuple[str, ...] = REQUIREMENTS) -> list[str]:
    """`name==version` for each of `names`, as installed in this environment."""
    lines = []
    for name in names:
        # Where TensorFlow came as the full `tensorflow` wheel (macOS), pin the CPU wheel to its version.
        candidates = ("tensorflow-cpu", "tensorflow") if name == "tensorflow-cpu" else (name,)
        for candidate in candidates:
            try:
                lines.append(f"{name}=={importlib.metadata.version(candidate)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            extra = "gradio" if name == "gradio" else "tensorflow"
            raise SpaceError(
                f"{name} is not installed, so there is no tested version to pin; "
                f"install it first (from dogcat's checkout: pip install '.[{extra}]')."
            )
    return lines


def build_space(out_dir: str | Path, model_path: str | Path | None = None) -> Path:
    """Write a ready-to-push Space folder to `out_dir` and return its path.

    `model_path` is a `.keras` file or a run folder (default: the model `dogcat predict` uses);
    `class_names.pkl` must be beside it, and the metrics files found there go into the card.
    """
    out = Path(out_dir).resolve()
    folder = ModelFolder(ModelFolder.resolve(model_path).keras.resolve())
    model = folder.keras
    class_names = load_class_names(folder.class_names)  # refuses a bad file early
    if out == PACKAGE_DIR.parent or out in PACKAGE_DIR.parents or out == PACKAGE_DIR or PACKAGE_DIR in out.parents:
        raise SpaceError(f"Refusing to build a Space over the dogcat source tree. Received: out_dir={str(out)!r}")
    if model.parent.resolve() == out / "models":
        raise SpaceError(f"The model to copy is already inside the output folder; copy it elsewhere first. Received: model={str(model)!r}")
    if out.exists() and not out.is_dir():
        raise SpaceError(f"The output path exists and is not a folder. Received: out_dir={str(out)!r}")
    above = next(folder for folder in out.parents if folder.exists())  # the root always exists
    if not above.is_dir():  # `afile.txt/sub`: mkdir would fail only after the model is loaded
        raise SpaceError(f"The output folder cannot be made inside a file ({str(above)!r}). Received: out_dir={str(out)!r}")
    for name in (MARKER_FILENAME, ".gitattributes"):  # read, then replaced: a symlink would be read through
        _refuse_symlinks(out, name)
    previous = _previous_build(out)  # refuses a folder of someone else's files before anything is written
    for name in previous:
        _refuse_symlinks(out, name)
    app = find_gradio_app()
    serves_onnx = isinstance(onnx_runner_for(model), OnnxRunner)
    requirements = pinned_requirements(ONNX_REQUIREMENTS if serves_onnx else REQUIREMENTS)

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX))
    try:
        shutil.copy2(app, staging / "app.py")
        shutil.copytree(PACKAGE_DIR, staging / "dogcat",
                        ignore=shutil.ignore_patterns(*NOT_VENDORED))
        examples = app.parent / "examples"
        if examples.is_dir():
            shutil.copytree(examples, staging / "examples")
        models = staging / "models"
        models.mkdir()
        for name, path in (folder.serving_files() | folder.card_files()).items():  # the card reads the records
            shutil.copy2(path, models / name)
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(space_readme(models, class_names, requirements, serves_onnx), encoding="utf-8")
        written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        for name in written:
            _refuse_symlinks(out, name)
        clashes = [name for name in written if name not in previous and (out / name).exists()]
        if clashes:
            raise SpaceError(
                f"The output folder has a file this build would overwrite but did not write; move it first. "
                f"Received: path={str(out / clashes[0])!r}"
            )
        # Everything staged: swap the files in. The marker is widened first, so a crash midway
        # leaves every file that may be this build's listed for the next build to clean up.
        _write_marker(out, sorted(set(previous) | set(written)))
        for name in previous:
            target = out / name
            if target.is_file() or target.is_symlink():
                target.unlink()
        for name in written:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).rename(out / name)
        _remove_empty_folders(out, [name for name in previous if name not in written])
        _write_marker(out, written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _ensure_lfs_rules(out / ".gitattributes")
    return out


def _previous_build(out: Path) -> list[str]:
    """The files the last build wrote into `out`, which this build may replace (for a fresh Space
    clone, only the Hub's generated README.md).

    Raises SpaceError for a folder holding anything else without a marker, and for a marker that
    names paths outside the folder, so a build never deletes a file it did not write (the caller
    refuses the symlinks on the way to each path: `_refuse_symlinks`).
    """
    if not out.is_dir():
        return []
    marker = out / MARKER_FILENAME
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            files = None
        safe = isinstance(files, list) and all(
            isinstance(name, str) and name and "\0" not in name and Path(name).parts and not Path(name).is_absolute()
            and ".." not in Path(name).parts and Path(name).parts[0] not in (".git", MARKER_FILENAME)
            for name in files
        )
        if not safe:
            raise SpaceError(f"The output folder's build marker is damaged; delete it to rebuild. Received: path={str(marker)!r}")
        return files
    foreign = sorted(
        entry.name for entry in out.iterdir()
        if entry.name not in CLONE_ENTRIES and not entry.name.startswith(STAGING_PREFIX)
        and not (entry.name == "README.md" and _is_hub_readme(entry))
    )
    if foreign:
        raise SpaceError(
            f"The output folder holds files that dogcat did not write ({len(foreign)} entries); build into an empty "
            f"folder or a fresh clone of the Space. Received: out_dir={str(out)!r} holding {foreign[0]!r}"
        )
    return ["README.md"] if (out / "README.md").is_file() else []  # the Hub's generated one: replaced


def _refuse_symlinks(out: Path, name: str) -> None:
    """Raise SpaceError unless `out / name` can be deleted or written without leaving `out`.

    Every step of the path is checked, not only the last: `cfg -> ../victim` turns `cfg/id_rsa`
    into a file outside the folder, and `models -> notes` into the user's folder inside it. A file
    where the path needs a folder is refused too, for a one-line error rather than mkdir's traceback.
    """
    path = out
    for part in Path(name).parts:
        path = path / part
        if path.is_symlink():
            raise SpaceError(
                f"The output folder has a symlink where the build would delete or write a file; dogcat never "
                f"follows one, so remove it first. Received: path={str(path)!r}"
            )
        if path != out / name and path.exists() and not path.is_dir():
            raise SpaceError(f"The output folder has a file where the build needs a folder; move it first. Received: path={str(path)!r}")
    if out not in (out / name).resolve().parents:  # no symlink and no `..` on the way: only a bug gets here
        raise SpaceError(f"A path the build would delete or write resolves outside the output folder. Received: path={str(out / name)!r}")


def _is_hub_readme(path: Path) -> bool:
    """Whether `path` is the README.md the Hub generates for a new Space: front matter and one line."""
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() and path.stat().st_size < 4096 else ""
    except (OSError, UnicodeDecodeError):
        return False
    parts = text.split("---", 2)
    return len(parts) == 3 and parts[0].strip() == "" and parts[2].strip() == HUB_README_LINE


def _write_marker(out: Path, files: list[str]) -> None:
    record = {"built_by": f"dogcat {__version__}", "files": files}
    write_text_atomic(out / MARKER_FILENAME, json.dumps(record, indent=1) + "\n")


def _remove_empty_folders(out: Path, removed: list[str]) -> None:
    """Remove the folders that held only files of the previous build (never `out` itself)."""
    folders = {parent for name in removed for parent in (out / name).parents if out in parent.parents}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (user files, __pycache__) or already gone
            folder.rmdir()


def _ensure_lfs_rules(path: Path) -> None:
    """Add Git LFS rules for the binary files (a Hub push refuses large or binary files outside LFS)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    present = {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}
    missing = [f"{pattern} filter=lfs diff=lfs merge=lfs -text" for pattern in LFS_PATTERNS if pattern not in present]
    if missing:
        write_text_atomic(path, text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(missing) + "\n")
