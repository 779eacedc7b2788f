"""The paper 002 metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scintnode.train import metrics

CLASSES = ("a", "b", "c")
# rows truth, columns prediction: 16 cases, 12 right
CONFUSION = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def test_per_class_rates_from_confusion() -> None:
    report = metrics.report_from_confusion(CONFUSION, CLASSES)
    a = report.per_class["a"]  # TP 5, FN 1, FP 2, TN 8
    assert a.sensitivity == pytest.approx(5 / 6)
    assert a.specificity == pytest.approx(8 / 10)
    assert a.ppv == pytest.approx(5 / 7)
    assert a.npv == pytest.approx(8 / 9)
    assert a.f1 == pytest.approx(10 / 13)
    assert a.support == 6
    c = report.per_class["c"]  # TP 4, FN 0, FP 1, TN 11
    assert (c.sensitivity, c.specificity, c.ppv, c.npv) == pytest.approx((1.0, 11 / 12, 4 / 5, 1.0))
    assert report.accuracy == pytest.approx(12 / 16)
    assert report.macro.sensitivity == pytest.approx((5 / 6 + 3 / 6 + 1.0) / 3)
    assert math.isnan(report.macro.auc)


def test_cohen_kappa_by_hand() -> None:
    expected_agreement = (6 * 7 + 6 * 4 + 4 * 5) / 16**2
    assert metrics.cohen_kappa(CONFUSION) == pytest.approx((0.75 - expected_agreement) / (1 - expected_agreement))
    assert metrics.cohen_kappa(np.diag([3, 4, 5])) == pytest.approx(1.0)


def test_confusion_matrix_and_evaluate_agree() -> None:
    truth = np.repeat([0, 1, 2], [6, 6, 4])
    predicted = np.array([0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    assert metrics.confusion_matrix(truth, predicted, 3).tolist() == CONFUSION.tolist()
    probs = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    report = metrics.evaluate(truth, probs, CLASSES)
    assert report.confusion.tolist() == CONFUSION.tolist()
    assert report.as_dict()["accuracy"] == pytest.approx(0.75)


def test_auc_counts_ties_half() -> None:
    positive = np.array([True, True, False, False, False])
    scores = np.array([0.9, 0.4, 0.5, 0.1, 0.4])
    assert metrics.roc_auc(positive, scores) == pytest.approx(4.5 / 6)
    assert math.isnan(metrics.roc_auc(np.array([True, True]), np.array([0.1, 0.2])))
    fpr, tpr = metrics.roc_curve(positive, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(4.5 / 6)


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        metrics.evaluate(np.array([0, 1]), np.ones((2, 2)), CLASSES)


def test_mean_and_sample_std() -> None:
    assert metrics.mean_and_std([0.9, 1.0]) == pytest.approx((0.95, math.sqrt(0.005)))
    assert metrics.mean_and_std([0.5]) == (0.5, 0.0)
