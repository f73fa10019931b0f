"""The model card: the Space's README.md, front matter and a card whose numbers are read from the
files beside the model (its metrics, its run's config and training record), never typed in.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from dogcat import __version__
from dogcat.artifacts import (
    CLASS_NAMES_FILENAME,
    DETECTOR_FILENAME,
    IMAGENET_HEAD_FILENAME,
    MODEL_FILENAME,
    ONNX_FILENAME,
)
from dogcat.config import Config, ConfigError, load_config
from dogcat.detector import DESCRIPTION
from dogcat.model_folder import ModelFolder

# The card's Python example, run as it is against a served Space by the tests (test_space.py):
# it must unpack exactly the outputs demos/gradio_app.py's /predict returns.
PREDICT_SNIPPET = """from gradio_client import Client, handle_file

client = Client("USER/SPACE")  # this Space
verdict, probabilities, result, heatmap = client.predict(handle_file("photo.jpg"), False, api_name="/predict")
print(result["verdict"], result["looks_like"], result["p_looks_like"])  # e.g. neither tiger 0.81
print(verdict["label"], probabilities["label"])  # e.g. 'Neither a cat nor a dog: looks like a tiger (81%)' 'cat'"""

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


def space_readme(models: Path, class_names: dict[int, str], requirements: list[str], serves_onnx: bool = False) -> str:
    """The Space's README.md: front matter, then a model card built from the files in `models`.

    `serves_onnx`: the app runs the ONNX twin, so the card names that file as what serves.
    """
    versions = dict(line.split("==") for line in requirements)
    front = {**FRONT_MATTER, "sdk_version": versions["gradio"], "python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    order = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file",
             "python_version", "license", "short_description", "pinned")
    lines = ["---", *(f"{key}: {_yaml_scalar(front[key])}" for key in order), "---", ""]
    card = ModelFolder(models / MODEL_FILENAME).card()
    metrics, training = card.get("test"), card.get("training")
    config = _run_config(ModelFolder(models / MODEL_FILENAME).config)
    names = ", ".join(f"{index}: {name}" for index, name in sorted(class_names.items()))
    size_mb = (models / MODEL_FILENAME).stat().st_size / 1e6

    lines += [
        "# dogcat: cat, dog, or neither?",
        "",
        "Upload a photo and the app gives a verdict: cat, dog, neither a cat nor a dog, not sure, or too small "
        f"to judge; and, below it, the classifier's probability of each class ({', '.join(class_names.values())}), "
        "summing to 1. The model is MobileNetV2 with ImageNet weights, fine-tuned with Keras 3 by "
        f"dogcat {__version__}, whose source is vendored in `dogcat/`.",
        "",
        "## Model",
        "",
        f"- `models/{MODEL_FILENAME}` ({size_mb:.1f} MB): takes one RGB photo, squashed to the model's square input; "
        "decoding (EXIF rotation, transparency, 16-bit and CMYK images) is dogcat's `decode_image`."
        + (" The reference: the app does not load it." if serves_onnx else ""),
        *([f"- `models/{ONNX_FILENAME}` ({(models / ONNX_FILENAME).stat().st_size / 1e6:.1f} MB): what the app serves, "
           "with ONNX Runtime (no Keras or TensorFlow in this Space): the same network, exported by `dogcat export` "
           "from the `.keras` file above (its sha256 is in the export's metadata), with the features the detector "
           "reads."] if serves_onnx else []),
        f"- `models/{CLASS_NAMES_FILENAME}`: {{{names}}}.",
        *([f"- `models/{DETECTOR_FILENAME}`: the \"neither\" detector, and `models/{IMAGENET_HEAD_FILENAME}`: "
           "MobileNetV2's ImageNet-1k classifier layer it reads (from TensorFlow's 8-bit MobileNetV2, Apache 2.0). "
           + DESCRIPTION] if (models / DETECTOR_FILENAME).is_file() else []),
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
        *(["- The classifier knows two classes only and gives P(cat) and P(dog) for any image; the \"neither\" "
           "verdict comes from the detector beside it. It still lets through some farm animals and people close "
           "to the training photos, and turns away about 1% of real cats and dogs."]
          if (models / DETECTOR_FILENAME).is_file() else
          ["- It knows two classes only, so it answers cat or dog for **any** image: a car, a rocket or a "
           "person gets one of the two labels, sometimes with high confidence (no detector was built for this model)."]),
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
        *PREDICT_SNIPPET.splitlines(),
        "```",
        "",
        "`/predict` takes the photo and whether to draw the heatmap, and returns four outputs, in this order: "
        "the verdict in words, the probabilities, the result for programs (`verdict`: `cat`, `dog`, `neither`, "
        "`unsure` or `too_small`; `label`; `p_cat`, `p_dog`; `width`, `height`; `looks_like`: ImageNet's most "
        "probable class, a hint, and `p_looks_like`), and the heatmap's file (None unless asked for). An unreadable photo is an "
        "error with a one-line reason.",
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
