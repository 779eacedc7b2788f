"""Multiclass diagnostic metrics as paper 002 reports them (Tables 2-5): accuracy, per-class sensitivity,
specificity, PPV, NPV, F1, one-vs-rest AUC, Cohen's kappa and the confusion matrix; numpy only.

Used by the training commands after each cross-validation fold and for the model cards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassMetrics:
    """One class against the rest."""

    sensitivity: float  # recall, TP / (TP + FN)
    specificity: float  # TN / (TN + FP)
    ppv: float  # precision, TP / (TP + FP)
    npv: float  # TN / (TN + FN)
    f1: float
    auc: float  # one-vs-rest ROC AUC from the class's probability; NaN if the class is absent or alone
    support: int  # true members


@dataclass(frozen=True)
class Report:
    """All metrics of one evaluation; macro values are unweighted means over classes (as in Table 3)."""

    classes: tuple[str, ...]
    confusion: np.ndarray  # (k, k) int, rows = truth, columns = prediction
    accuracy: float
    kappa: float
    per_class: dict[str, ClassMetrics]
    macro: ClassMetrics

    def as_dict(self) -> dict[str, object]:
        def row(m: ClassMetrics) -> dict[str, float | int]:
            return {
                "sensitivity": m.sensitivity,
                "specificity": m.specificity,
                "ppv": m.ppv,
                "npv": m.npv,
                "f1": m.f1,
                "auc": m.auc,
                "support": m.support,
            }

        return {
            "classes": list(self.classes),
            "confusion": self.confusion.tolist(),
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "macro": row(self.macro),
            "per_class": {name: row(m) for name, m in self.per_class.items()},
        }


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    truth, predicted = _indices(truth, n_classes, "truth"), _indices(predicted, n_classes, "predicted")
    if truth.shape != predicted.shape:
        raise ValueError(f"truth has {truth.size} items but predicted has {predicted.size}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def cohen_kappa(confusion: np.ndarray) -> float:
    """Agreement beyond chance between truth and prediction (Cohen 1960)."""
    total = confusion.sum()
    if total == 0:
        return float("nan")
    observed = np.trace(confusion) / total
    expected = float((confusion.sum(axis=0) * confusion.sum(axis=1)).sum()) / float(total) ** 2
    return float((observed - expected) / (1.0 - expected)) if expected < 1.0 else float("nan")


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); NaN without both groups."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    hits = positive[order]
    distinct = np.r_[np.nonzero(np.diff(sorted_scores))[0], hits.size - 1]
    tp = np.cumsum(hits)[distinct]
    fp = (distinct + 1) - tp
    tpr = np.r_[0.0, tp / max(int(hits.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~hits).sum()), 1)]
    return fpr, tpr


def evaluate(truth: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> Report:
    """Metrics for class indices `truth` (N,) and class probabilities (N, k); prediction = arg max."""
    probs = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probabilities must be (N, {k}), got shape {probs.shape}")
    truth = _indices(truth, k, "truth")
    predicted = probs.argmax(axis=1)
    return report_from_confusion(
        confusion_matrix(truth, predicted, k),
        classes,
        aucs=[roc_auc(truth == i, probs[:, i]) for i in range(k)],
    )


def report_from_confusion(confusion: np.ndarray, classes: Sequence[str], aucs: Sequence[float] | None = None) -> Report:
    """Metrics from a confusion matrix (rows truth, columns prediction); AUCs need scores, so pass them."""
    matrix = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix must be {k}x{k} for {k} classes, got {matrix.shape}")
    total = int(matrix.sum())
    aucs = list(aucs) if aucs is not None else [float("nan")] * k
    per_class: dict[str, ClassMetrics] = {}
    for i, name in enumerate(classes):
        tp = int(matrix[i, i])
        fn = int(matrix[i].sum()) - tp
        fp = int(matrix[:, i].sum()) - tp
        tn = total - tp - fn - fp
        sensitivity, ppv = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
        per_class[name] = ClassMetrics(
            sensitivity=sensitivity,
            specificity=_ratio(tn, tn + fp),
            ppv=ppv,
            npv=_ratio(tn, tn + fn),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            auc=float(aucs[i]),
            support=tp + fn,
        )
    rows = list(per_class.values())
    macro = ClassMetrics(
        sensitivity=_nanmean([m.sensitivity for m in rows]),
        specificity=_nanmean([m.specificity for m in rows]),
        ppv=_nanmean([m.ppv for m in rows]),
        npv=_nanmean([m.npv for m in rows]),
        f1=_nanmean([m.f1 for m in rows]),
        auc=_nanmean([m.auc for m in rows]),
        support=total,
    )
    return Report(
        classes=tuple(classes),
        confusion=matrix,
        accuracy=_ratio(int(np.trace(matrix)), total),
        kappa=cohen_kappa(matrix),
        per_class=per_class,
        macro=macro,
    )


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), NaNs ignored."""
    array = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def _indices(values: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D array of class indices, got {array.dtype} {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(f"{what} holds class indices outside 0..{n_classes - 1}")
    return array.astype(np.int64)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks
