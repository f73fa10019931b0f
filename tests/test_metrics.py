import math

import numpy as np
import pytest

from dogcat.metrics import classification_metrics, roc_auc

NAMES = {0: "cat", 1: "dog"}


def test_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    metrics = classification_metrics(labels, probabilities, NAMES)
    assert metrics["accuracy"] == 0.5
    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]
    expected_log_loss = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.3)) / 4
    assert metrics["log_loss"] == pytest.approx(expected_log_loss)
    # dog scores: negatives 0.1, 0.6; positives 0.8, 0.3 -> pairs won: (0.8>0.1, 0.8>0.6, 0.3>0.1) = 3 of 4
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["per_class"]["cat"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}


def test_roc_auc_counts_ties_half():
    assert roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([True, True]), np.array([0.1, 0.2])) is None


def test_log_loss_is_finite_for_a_confident_mistake():
    metrics = classification_metrics(np.array([1]), np.array([[1.0, 0.0]]), NAMES)
    assert math.isfinite(metrics["log_loss"])
