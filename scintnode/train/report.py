"""A one-page PNG of an evaluation: confusion matrix and one-vs-rest ROC curves, drawn with OpenCV.

Written next to the weights by the training commands, so the model card can point at a picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from scintnode.train import metrics

_COLOURS = ((200, 60, 40), (40, 150, 40), (40, 40, 200), (0, 150, 220), (150, 40, 150), (120, 120, 0))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_report(truth: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], title: str, path: Path) -> Path:
    """Confusion matrix (left) and ROC curves with AUC (right) of predictions, saved as PNG at `path`."""
    report = metrics.evaluate(truth, probabilities, classes)
    canvas = np.full((560, 1120, 3), 255, dtype=np.uint8)
    cv2.putText(canvas, title, (20, 32), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    _confusion(canvas, report.confusion, classes, origin=(170, 90), cell=80)
    _roc(canvas, np.asarray(truth), np.asarray(probabilities), classes, origin=(640, 80), side=420)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")
    return path


def _confusion(
    canvas: np.ndarray, confusion: np.ndarray, classes: Sequence[str], origin: tuple[int, int], cell: int
) -> None:
    x0, y0 = origin
    row_totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    share = confusion / row_totals
    for i in range(len(classes)):
        for j in range(len(classes)):
            shade = int(255 - 200 * share[i, j])
            top_left = (x0 + j * cell, y0 + i * cell)
            bottom_right = (x0 + (j + 1) * cell, y0 + (i + 1) * cell)
            cv2.rectangle(canvas, top_left, bottom_right, (255, shade, shade), -1)
            cv2.rectangle(canvas, top_left, bottom_right, (120, 120, 120), 1)
            colour = (255, 255, 255) if share[i, j] > 0.6 else (0, 0, 0)
            cv2.putText(canvas, str(int(confusion[i, j])), (top_left[0] + 25, top_left[1] + 48), _FONT, 0.7, colour, 2)
        cv2.putText(canvas, classes[i][:14], (x0 - 150, y0 + i * cell + 45), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, classes[i][:10], (x0 + i * cell + 4, y0 - 8), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    bottom = y0 + len(classes) * cell
    cv2.putText(canvas, "rows: truth, columns: prediction", (x0 - 60, bottom + 30), _FONT, 0.5, (0, 0, 0), 1)


def _roc(
    canvas: np.ndarray,
    truth: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    origin: tuple[int, int],
    side: int,
) -> None:
    x0, y0 = origin
    cv2.rectangle(canvas, (x0, y0), (x0 + side, y0 + side), (0, 0, 0), 1)
    cv2.line(canvas, (x0, y0 + side), (x0 + side, y0), (180, 180, 180), 1, cv2.LINE_AA)
    cv2.putText(canvas, "1 - specificity", (x0 + side // 2 - 60, y0 + side + 30), _FONT, 0.5, (0, 0, 0), 1)
    cv2.putText(canvas, "sensitivity", (x0 - 10, y0 - 10), _FONT, 0.5, (0, 0, 0), 1)
    for index, name in enumerate(classes):
        positive = truth == index
        fpr, tpr = metrics.roc_curve(positive, probabilities[:, index])
        auc = metrics.roc_auc(positive, probabilities[:, index])
        points = np.stack([x0 + fpr * side, y0 + side - tpr * side], axis=1).round().astype(np.int32)
        colour = _COLOURS[index % len(_COLOURS)]
        cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        legend = f"{name}  AUC {auc:.3f}" if not np.isnan(auc) else f"{name}  AUC n/a"
        cv2.putText(canvas, legend, (x0 + 150, y0 + side - 20 - 22 * index), _FONT, 0.5, colour, 1, cv2.LINE_AA)
