"""`dogcat evaluate`: the served prediction path, scored on a labelled split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dogcat.artifacts import save_atomic, strict_json, write_text_atomic
from dogcat.data import DataError, read_split
from dogcat.inference import Classifier
from dogcat.metrics import classification_metrics
from dogcat.model_folder import CONFUSION_MATRIX_FILENAME, TEST_RECORD_FILENAME
from dogcat.verdict import CAT, DOG, NEITHER, TOO_SMALL, VERDICTS


def evaluate(classifier: Classifier, data_dir: str | Path, split: str = "test", out_dir: str | Path | None = None,
             neither_dir: str | Path | None = None) -> dict:
    """Metrics for `split` of a prepared dataset (or any folder of labelled images).

    Unreadable files are listed under "skipped" and left out of the metrics. With `neither_dir`
    (a folder of photos with no cat and no dog), also the share of them called "neither". With
    `out_dir`, writes `test_metrics.json` and `confusion_matrix.png` there: the model card's records
    when `out_dir` is the model's folder.
    """
    data = read_split(data_dir, split)
    try:
        metrics = score_files(classifier, data.paths, data.labels)
    except DataError as error:
        raise DataError(f"{error} Received: data_dir={str(data_dir)!r}") from None
    metrics["split"] = split
    if neither_dir is not None:
        metrics["neither_folder"] = score_neither_folder(classifier, neither_dir)
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / TEST_RECORD_FILENAME, strict_json(metrics, indent=2) + "\n")
        plot_confusion_matrix(metrics, out_dir / CONFUSION_MATRIX_FILENAME)
    return metrics


def score_files(classifier: Classifier, paths, labels) -> dict:
    """Metrics of `classifier` on labelled image files, through the served path (`Classifier.predict`).

    Unreadable files are listed under "skipped" and left out of the metrics.
    """
    labels = np.asarray(labels)
    predictions = classifier.predict(paths, names=[str(p) for p in paths])
    kept = [i for i, p in enumerate(predictions) if p.error is None]
    if not kept:
        raise DataError(f"None of the {len(predictions)} images could be read.")
    names = [classifier.class_names[i] for i in range(len(classifier.class_names))]
    probabilities = np.array([[predictions[i].probabilities[n] for n in names] for i in kept])
    metrics = classification_metrics(labels[kept], probabilities, classifier.class_names)
    metrics["skipped"] = [{"path": p.source, "reason": p.error} for p in predictions if p.error]
    metrics["misclassified"] = [
        predictions[i].source for i in kept if predictions[i].label != classifier.class_names[int(labels[i])]
    ]
    metrics["verdicts"] = verdict_counts(predictions[i] for i in kept)
    # Every photo here is a real cat or dog: a "neither" or "too small" verdict turns it away.
    judged = np.array([predictions[i].verdict not in (NEITHER, TOO_SMALL) for i in kept])
    metrics["turned_away"] = {
        "neither": metrics["verdicts"][NEITHER] / len(kept),
        "too_small": metrics["verdicts"][TOO_SMALL] / len(kept),
    }
    correct = probabilities.argmax(axis=1) == labels[kept]
    metrics["accuracy_judged"] = float(correct[judged].mean()) if judged.any() else None
    metrics["detector"] = classifier.detector is not None
    return metrics


def score_neither_folder(classifier: Classifier, folder: str | Path) -> dict:
    """Verdicts on a folder of photos with no cat and no dog: the share flagged (not called a cat or
    a dog: neither, unsure or too small) is the detector's recall, the share called "neither" its strong part."""
    from dogcat.preprocessing import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Not a folder. Received: neither={str(folder)!r}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    predictions = classifier.predict(paths, names=[str(p) for p in paths])
    read = [(path, p) for path, p in zip(paths, predictions, strict=True) if p.error is None]
    if not read:
        raise DataError(f"No readable photos in the folder. Received: neither={str(folder)!r}")
    categories: dict[str, list] = {}  # by first-level sub-folder: people/, vehicles/, ...
    for path, prediction in read:
        parts = path.relative_to(folder).parts
        categories.setdefault(parts[0] if len(parts) > 1 else ".", []).append(prediction)
    counts = verdict_counts(p for _, p in read)

    def shares(items) -> dict:
        return {"count": len(items), "flagged": sum(p.verdict not in (CAT, DOG) for p in items) / len(items),
                "neither": sum(p.verdict == NEITHER for p in items) / len(items)}

    return {"folder": str(folder), **shares([p for _, p in read]), "verdicts": counts,
            "categories": {name: shares(items) for name, items in sorted(categories.items())}}


def verdict_counts(predictions) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for prediction in predictions:
        counts[prediction.verdict] += 1
    return counts


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
    counts = ", ".join(f"{name} {count}" for name, count in metrics["verdicts"].items())
    lines.append(f"verdicts  {counts}" + ("" if metrics["detector"] else " (no detector: no 'neither' verdicts)"))
    lines.append(f"turned away  {metrics['turned_away']['neither']:.2%} as neither, "
                 f"{metrics['turned_away']['too_small']:.2%} as too small")
    if metrics["accuracy_judged"] is not None:
        lines.append(f"accuracy on the photos judged cat or dog  {metrics['accuracy_judged']:.4f}")
    if "neither_folder" in metrics:
        folder = metrics["neither_folder"]
        lines.append(f"neither folder  {folder['flagged']:.2%} of {folder['count']} photos not called a cat or a dog, "
                     f"{folder['neither']:.2%} neither ({folder['folder']})")
        if len(folder["categories"]) > 1:
            lines.extend(f"  {name:<16} {c['flagged']:7.2%} of {c['count']} ({c['neither']:.2%} neither)"
                         for name, c in folder["categories"].items())
    if metrics["skipped"]:
        lines.append(f"skipped {len(metrics['skipped'])} unreadable files")
    return "\n".join(lines)
