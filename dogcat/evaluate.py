"""`dogcat evaluate`: the served prediction path, scored on a labelled split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dogcat.artifacts import save_atomic, write_text_atomic
from dogcat.data import read_split
from dogcat.inference import Classifier
from dogcat.metrics import classification_metrics


def evaluate(classifier: Classifier, data_dir: str | Path, split: str = "test", out_dir: str | Path | None = None) -> dict:
    """Metrics for `split` of a prepared dataset (or any folder of labelled images).

    Unreadable files are listed under "skipped" and left out of the metrics. With `out_dir`,
    writes `metrics.json` and `confusion_matrix.png` there.
    """
    data = read_split(data_dir, split)
    try:
        metrics = score_files(classifier, data.paths, data.labels)
    except ValueError as error:
        raise ValueError(f"{error} Received: data_dir={str(data_dir)!r}") from None
    metrics["split"] = split
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        plot_confusion_matrix(metrics, out_dir / "confusion_matrix.png")
    return metrics


def score_files(classifier: Classifier, paths, labels) -> dict:
    """Metrics of `classifier` on labelled image files, through the served path (`Classifier.predict`).

    Unreadable files are listed under "skipped" and left out of the metrics.
    """
    labels = np.asarray(labels)
    predictions = classifier.predict(paths, names=[str(p) for p in paths])
    kept = [i for i, p in enumerate(predictions) if p.error is None]
    if not kept:
        raise ValueError(f"None of the {len(predictions)} images could be read.")
    names = [classifier.class_names[i] for i in range(len(classifier.class_names))]
    probabilities = np.array([[predictions[i].probabilities[n] for n in names] for i in kept])
    metrics = classification_metrics(labels[kept], probabilities, classifier.class_names)
    metrics["skipped"] = [{"path": p.source, "reason": p.error} for p in predictions if p.error]
    metrics["misclassified"] = [
        predictions[i].source for i in kept if predictions[i].label != classifier.class_names[int(labels[i])]
    ]
    return metrics


def plot_confusion_matrix(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    matrix = np.array(metrics["confusion_matrix"])
    names = metrics["class_names"]
    figure, axis = plt.subplots(figsize=(4.5, 4))
    axis.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=color, fontsize=14)
    axis.set_xticks(range(len(names)), names)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"{metrics['split']}: accuracy {metrics['accuracy']:.2%}")
    figure.tight_layout()
    save_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)


def format_metrics(metrics: dict) -> str:
    lines = [
        f"{metrics['split']}: {metrics['count']} images",
        f"accuracy  {metrics['accuracy']:.4f}",
        f"log loss  {metrics['log_loss']:.4f}",
        f"ROC AUC   {metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "ROC AUC   n/a (one class)",
    ]
    for name, values in metrics["per_class"].items():
        lines.append(f"{name:<9} precision {values['precision']:.4f} recall {values['recall']:.4f} (n={values['support']})")
    lines.append(f"confusion (rows true, columns predicted {metrics['class_names']}): {metrics['confusion_matrix']}")
    if metrics["skipped"]:
        lines.append(f"skipped {len(metrics['skipped'])} unreadable files")
    return "\n".join(lines)
