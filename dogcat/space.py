"""Build a Hugging Face Space (Gradio SDK) folder that can be pushed as it is.

`build_space(OUT)` writes:

    OUT/app.py             the Gradio demo (a copy of demos/gradio_app.py: one app, not two)
    OUT/dogcat/            this package's source, vendored, so no dogcat release is needed
    OUT/models/            the model, its class names and the metrics files found beside it
    OUT/examples/          the demo's example photos and their licences
    OUT/requirements.txt   the versions installed here, pinned: with a matching ONNX export beside
                           the model, only Gradio, ONNX Runtime, Pillow and NumPy (no TensorFlow);
                           otherwise Keras and CPU-only TensorFlow as well
    OUT/README.md          Spaces front matter + a model card whose numbers are read from files
    OUT/.gitattributes     Git LFS rules for the binary files, for a `git push` of the folder

The vendored package finds the model at OUT/models/ the way a source checkout finds models/, so
app.py needs no path of its own. Building into an existing folder (such as a `git clone` of the
Space) replaces only the entries above and keeps everything else (.git included).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from dogcat import __version__
from dogcat.artifacts import (
    CLASS_NAMES_FILENAME,
    MODEL_FILENAME,
    bundled_file,
    load_class_names,
    load_model_card,
    write_text_atomic,
)
from dogcat.config import Config, ConfigError, load_config
from dogcat.inference import OnnxRunner, onnx_runner_for

PACKAGE_DIR = Path(__file__).resolve().parent
APP_FILENAME = "gradio_app.py"
# Folders a wheel carries inside the package (see dogcat.artifacts.bundled_file): not vendored.
NOT_VENDORED = ("__pycache__", "*.pyc", "_models", "_demos")

# Files copied from beside the model when present: the card is built from them.
MODEL_SIDE_FILES = ("dog_cat_classifier.onnx", "test_metrics.json", "training.json", "config.toml", "confusion_matrix.png")
# What the Space installs, pinned to the versions installed (and tested) here.
# tensorflow-cpu: a Space has no GPU, and the CPU wheel is a fraction of the size.
# A model with a matching ONNX twin (`dogcat export`) is served by ONNX Runtime, which needs
# neither Keras nor TensorFlow: the Space installs only what that path imports.
ONNX_REQUIREMENTS = ("gradio", "onnxruntime", "pillow", "numpy")
# Without one, the Space runs the .keras model itself.
REQUIREMENTS = ("gradio", "keras", "tensorflow-cpu", "onnxruntime", "pillow", "numpy", "tqdm", "matplotlib")
LFS_PATTERNS = ("*.keras", "*.onnx", "*.pkl", "*.png", "*.jpg")
# The entries build_space owns in OUT; anything else there is left alone.
MANAGED = ("app.py", "dogcat", "models", "examples", "requirements.txt", "README.md")

FRONT_MATTER = {
    "title": "dogcat",
    "emoji": "🐶",
    "colorFrom": "yellow",
    "colorTo": "gray",
    "sdk": "gradio",
    "app_file": "app.py",
    "license": "mit",  # the project's licence (pyproject.toml)
    "short_description": "Cat or dog? MobileNetV2 fine-tuned with Keras 3",
    "pinned": False,
}


class SpaceError(ValueError):
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
                f"install it first (pip install 'dogcat[{extra}]')."
            )
    return lines


def build_space(out_dir: str | Path, model_path: str | Path | None = None) -> Path:
    """Write a ready-to-push Space folder to `out_dir` and return its path.

    `model_path` is a `.keras` file or a run folder (default: the model `dogcat predict` uses);
    `class_names.pkl` must be beside it, and the metrics files found there go into the card.
    """
    out = Path(out_dir).resolve()
    model = _resolve_model(model_path)
    class_names = load_class_names(model.with_name(CLASS_NAMES_FILENAME))  # refuses a bad file early
    if out == PACKAGE_DIR.parent or out in PACKAGE_DIR.parents or out == PACKAGE_DIR or PACKAGE_DIR in out.parents:
        raise SpaceError(f"Refusing to build a Space over the dogcat source tree. Received: out_dir={str(out)!r}")
    if model.parent.resolve() == out / "models":
        raise SpaceError(f"The model to copy is already inside the output folder; copy it elsewhere first. Received: model={str(model)!r}")
    if out.exists() and not out.is_dir():
        raise SpaceError(f"The output path exists and is not a folder. Received: out_dir={str(out)!r}")
    app = find_gradio_app()
    serves_onnx = isinstance(onnx_runner_for(model), OnnxRunner)
    requirements = pinned_requirements(ONNX_REQUIREMENTS if serves_onnx else REQUIREMENTS)

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".dogcat-space-"))
    try:
        shutil.copy2(app, staging / "app.py")
        shutil.copytree(PACKAGE_DIR, staging / "dogcat",
                        ignore=shutil.ignore_patterns(*NOT_VENDORED))
        examples = app.parent / "examples"
        if examples.is_dir():
            shutil.copytree(examples, staging / "examples")
        models = staging / "models"
        models.mkdir()
        shutil.copy2(model, models / MODEL_FILENAME)
        shutil.copy2(model.with_name(CLASS_NAMES_FILENAME), models / CLASS_NAMES_FILENAME)
        for name in MODEL_SIDE_FILES:
            if model.with_name(name).is_file():
                shutil.copy2(model.with_name(name), models / name)
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(space_readme(models, class_names, requirements), encoding="utf-8")
        # Everything staged: now swap the entries in, one rename each.
        for name in MANAGED:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if (staging / name).exists():
                (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _ensure_lfs_rules(out / ".gitattributes")
    return out


def _resolve_model(model_path: str | Path | None) -> Path:
    if model_path is None:
        from dogcat.inference import default_model_path  # imports Keras: only when needed

        model = default_model_path()
    else:
        model = Path(model_path)
    if model.is_dir():
        model = model / MODEL_FILENAME
    if not model.is_file():
        raise SpaceError(f"Model file not found. Received: model={str(model)!r}")
    return model.resolve()


def _ensure_lfs_rules(path: Path) -> None:
    """Add Git LFS rules for the binary files (a Hub push refuses large or binary files outside LFS)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    present = {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}
    missing = [f"{pattern} filter=lfs diff=lfs merge=lfs -text" for pattern in LFS_PATTERNS if pattern not in present]
    if missing:
        write_text_atomic(path, text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(missing) + "\n")


def _run_config(path: Path) -> Config | None:
    """The resolved config a run saved beside its model, read by the project's one config loader."""
    if not path.is_file():
        return None
    try:
        return load_config(path)
    except ConfigError:
        return None


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid YAML string


def space_readme(models: Path, class_names: dict[int, str], requirements: list[str]) -> str:
    """The Space's README.md: front matter, then a model card built from the files in `models`."""
    versions = dict(line.split("==") for line in requirements)
    front = {**FRONT_MATTER, "sdk_version": versions["gradio"], "python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    order = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file",
             "python_version", "license", "short_description", "pinned")
    lines = ["---", *(f"{key}: {_yaml_scalar(front[key])}" for key in order), "---", ""]
    card = load_model_card(models / MODEL_FILENAME)
    metrics, training = card.get("test"), card.get("training")
    config = _run_config(models / "config.toml")
    names = ", ".join(f"{index}: {name}" for index, name in sorted(class_names.items()))
    size_mb = (models / MODEL_FILENAME).stat().st_size / 1e6

    lines += [
        "# dogcat: cat or dog?",
        "",
        f"Upload a photo and the app gives the probability of each class ({', '.join(class_names.values())}), "
        "summing to 1. The model is MobileNetV2 with ImageNet weights, fine-tuned with Keras 3 by "
        f"dogcat {__version__}, whose source is vendored in `dogcat/`.",
        "",
        "## Model",
        "",
        f"- `models/{MODEL_FILENAME}` ({size_mb:.1f} MB): takes one RGB photo, squashed to the model's square input; "
        "decoding (EXIF rotation, transparency, 16-bit and CMYK images) is dogcat's `decode_image`.",
        f"- `models/{CLASS_NAMES_FILENAME}`: {{{names}}}.",
        "",
        "## Data",
        "",
        "Photos from the training set of the Kaggle \"Dogs vs. Cats\" competition (the Asirra images), "
        "checked, de-duplicated, balanced and split into train / validation / test by `dogcat data prepare`.",
    ]
    if training and training.get("data_manifest_sha256"):
        lines.append(f"The prepared data's `manifest.csv` has sha256 `{training['data_manifest_sha256']}`.")
    lines += ["", "## Recipe", ""]
    lines += _recipe(config, training)
    lines += ["", "## Measured on the held-out test split", ""]
    lines += _measured(metrics)
    if (models / "confusion_matrix.png").is_file():
        lines += ["", "![Confusion matrix on the test split](models/confusion_matrix.png)"]
    lines += [
        "",
        "## Limits",
        "",
        "- It knows two classes only, so it answers cat or dog for **any** image: a car, a rocket or a "
        "person gets one of the two labels, sometimes with high confidence (the rocket and astronaut examples show it).",
        "- Training photos were squashed to a square from their original aspect ratio; uploads are squashed the same way.",
        "- A photo with both a cat and a dog gets one answer for the whole picture.",
    ]
    if metrics and metrics.get("count"):
        lines.append(f"- The test split has {metrics['count']} images: the accuracy above is known to "
                     f"about +/-{_margin(metrics['accuracy'], metrics['count']) * 100:.1f} percentage points (95% interval).")
    lines += [
        "",
        "## Use it from Python",
        "",
        "```python",
        "from gradio_client import Client, handle_file",
        "",
        'client = Client("USER/SPACE")  # this Space',
        'result = client.predict(handle_file("photo.jpg"), api_name="/predict")',
        "# {'label': 'dog', 'confidences': [{'label': 'dog', 'confidence': 0.99...}, {'label': 'cat', ...}]}",
        "```",
        "",
        "## Files",
        "",
        "Built by `dogcat space build`. `requirements.txt` pins the versions the app was tested with: "
        + ", ".join(requirements) + ". Example photos: see `examples/LICENSES.md`.",
        "",
    ]
    return "\n".join(lines)


def _recipe(config: Config | None, training: dict[str, Any] | None) -> list[str]:
    if config is None:
        return ["Not recorded (no readable `config.toml` beside the model)."]
    data, model, train = config.data, config.model, config.train
    lines = [
        f"- Input {data.image_size} px; augmentation: flip `{model.flip}`, rotation "
        f"+/-{model.rotation * 360:.0f} deg (training only).",
        f"- {train.head_epochs} epochs with the MobileNetV2 base frozen (Adam {train.learning_rate}), "
        f"then the last {model.fine_tune_blocks} block(s) unfrozen, BatchNorm kept frozen "
        f"(Adam {train.fine_tune_learning_rate}), up to {train.epochs} epochs in all; "
        f"batch {train.batch_size}; head Dense({model.dense_units}) with dropout {model.dropout}; "
        f"early stopping on validation loss (patience {train.early_stopping_patience}); seed {train.seed}.",
    ]
    if training:
        lines.append(
            f"- Ran {training.get('epochs_run')} epochs; best epoch {training.get('best_epoch')} "
            f"(validation accuracy {training.get('val_accuracy', float('nan')):.4f}, loss {training.get('val_loss', float('nan')):.4f}); "
            f"Keras {training.get('keras_version')}, {training.get('backend')} backend."
        )
    return lines


def _measured(metrics: dict[str, Any] | None) -> list[str]:
    if not metrics or "accuracy" not in metrics:
        return ["Not measured: no `test_metrics.json` beside the model (write one with `dogcat evaluate MODEL DATA --out DIR`)."]
    names = metrics.get("class_names") or list(metrics.get("per_class", {}))
    correct = round(metrics["accuracy"] * metrics["count"])
    lines = [
        "| metric | value |",
        "|---|---|",
        f"| accuracy ({metrics['count']} images) | **{metrics['accuracy']:.4f}** ({correct} / {metrics['count']}) |",
    ]
    if "log_loss" in metrics:
        lines.append(f"| log loss | {metrics['log_loss']:.4f} |")
    if "roc_auc" in metrics:
        lines.append(f"| ROC AUC | {metrics['roc_auc']:.4f} |")
    for name in names:
        per = metrics.get("per_class", {}).get(name)
        if per:
            lines.append(f"| {name}: precision / recall | {per['precision']:.3f} / {per['recall']:.3f} |")
    if "confusion_matrix" in metrics:
        lines.append(f"| confusion matrix (rows: true {', '.join(names)}; columns: predicted) | {metrics['confusion_matrix']} |")
    lines += ["", "Read from `models/test_metrics.json`, written by `dogcat evaluate`."]
    return lines


def _margin(accuracy: float, count: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy measured on `count` images."""
    return 1.96 * math.sqrt(accuracy * (1 - accuracy) / count)
