"""Classification metrics in NumPy: no scikit-learn dependency for five formulas."""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # probability clip for log loss, as Keras does


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: dict[int, str]) -> dict:
    """Accuracy, log loss, ROC AUC (class 1 vs class 0), per-class precision/recall/F1, confusion matrix.

    `confusion_matrix[i][j]` counts images of true class i predicted as class j.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(labels) != len(probabilities) or len(labels) == 0:
        raise ValueError(f"Expected N labels and (N, C) probabilities, N > 0. Received: {labels.shape} and {probabilities.shape}")
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_probability = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0)
    per_class = {}
    for index in range(num_classes):
        hits = confusion[index, index]
        predicted_count, actual_count = confusion[:, index].sum(), confusion[index, :].sum()
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / actual_count if actual_count else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[class_names[index]] = {
            "precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(actual_count)
        }
    return {
        "count": len(labels),
        "accuracy": float((predicted == labels).mean()),
        "log_loss": float(-np.log(true_probability).mean()),
        "roc_auc": roc_auc(labels == 1, probabilities[:, 1]) if num_classes == 2 else None,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": [class_names[i] for i in range(num_classes)],
    }


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted half."""
    is_positive = np.asarray(is_positive, dtype=bool)
    positives, negatives = is_positive.sum(), (~is_positive).sum()
    if positives == 0 or negatives == 0:
        return None  # undefined with a single class
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    start = 0
    while start < len(scores):  # average ranks over runs of tied scores
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    u = ranks[is_positive].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))
