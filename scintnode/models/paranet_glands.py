"""Candidate parathyroid glands from ParaNet's Grad-CAM maps (paper 000 §3): peaks, their site, their check.

Infer stage, after the network: the late path's map and the late image's uptake give the candidates (the late
image registered onto the early one), the early image's thyroid
gives each one a site (patient's right/left, upper/lower, mediastinal or ectopic cervical). Training scores
the candidates against the phantoms' glands the way the paper's Table 1 counts them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from scintnode.cam import to_grid
from scintnode.models.spec import Code

MAX_CANDIDATES = 4
PEAK_THRESHOLD = 0.5  # of the strongest peak: weaker local maxima are the map's background, not glands
PEAK_SEPARATION_MM = 15.0  # two glands closer than this are one focus at planar resolution
UPTAKE_SMOOTHING_MM = 3.5  # Gaussian sigma: Poisson noise of single pixels is not a focus
# A candidate "falls within" a gland when it lies inside its outline widened by the camera's resolution
# (7-10 mm FWHM): a Grad-CAM peak is never sharper than the image it explains.
HIT_MARGIN_MM = 8.0

PARATHYROID = Code("111002", "SCT", "Parathyroid")
MEDIASTINUM = Code("72410000", "SCT", "Mediastinum")
NECK = Code("45048000", "SCT", "Neck")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
SUPERIOR = Code("264217000", "SCT", "Superior")
INFERIOR = Code("261089000", "SCT", "Inferior")


@dataclass(frozen=True)
class Candidate:
    """A heatmap peak in network-input pixels ((0.5, 0.5) is the top-left pixel's centre) and its site."""

    column: float
    row: float
    score: float  # combined heat at the peak, 0..1
    site: str  # "right-upper", "left-lower", "mediastinal", "ectopic-cervical", ...


@dataclass(frozen=True)
class SiteCodes:
    """How a site is written in the SR: anatomic location, laterality and topographical modifier."""

    location: Code
    laterality: Code | None
    modifier: Code | None


def site_codes(site: str) -> SiteCodes:
    if site == "mediastinal":
        return SiteCodes(MEDIASTINUM, None, None)
    side, _, level = site.partition("-")
    laterality = RIGHT if side == "right" else LEFT if side == "left" else None
    if "ectopic" in site:
        return SiteCodes(NECK, laterality, None)
    return SiteCodes(PARATHYROID, laterality, SUPERIOR if level == "upper" else INFERIOR)


@dataclass(frozen=True)
class ThyroidOutline:
    """Where the thyroid lies in an early MIBI network input, in pixels."""

    column: float
    row: float
    half_height: float


def find_thyroid(early: np.ndarray) -> ThyroidOutline:
    """The thyroid on an early MIBI input: the lowest of the bright, large structures not on the image border.

    Salivary glands lie above it and the heart reaches in from the bottom edge; an abnormal gland is smaller
    than a lobe, so the four largest bright blobs hold the thyroid, and it is the lowest of them."""
    size = early.shape[0]
    smooth = cv2.GaussianBlur(early.astype(np.float32), (0, 0), sigmaX=max(1.0, size / 100.0))
    mask = (smooth >= 0.45 * float(smooth.max())).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    blobs = []
    for label in range(1, count):
        x, y, w, h, _ = (int(v) for v in stats[label])
        if x == 0 or y == 0 or x + w >= size or y + h >= size:
            continue
        blobs.append((float(smooth[labels == label].sum()), label))
    if not blobs:
        return ThyroidOutline(size / 2.0, size / 2.0, size / 10.0)
    largest = [label for _, label in sorted(blobs, reverse=True)[:4]]
    thyroid = max(largest, key=lambda label: float(centroids[label][1]))
    cx, cy = (float(v) for v in centroids[thyroid])
    # The other lobe, when the isthmus is faint: a large blob beside it at about the same height.
    members = [
        label
        for label in largest
        if abs(float(centroids[label][1]) - cy) < size * 0.08 and abs(float(centroids[label][0]) - cx) < size * 0.25
    ]
    rows = np.concatenate([np.nonzero(labels == label)[0] for label in members])
    columns = np.concatenate([np.nonzero(labels == label)[1] for label in members])
    return ThyroidOutline(
        float(columns.mean()) + 0.5, float(rows.mean()) + 0.5, max(1.0, (float(rows.max()) - float(rows.min())) / 2.0)
    )


def site_of(column: float, row: float, thyroid: ThyroidOutline, mm_per_pixel: float) -> str:
    """The site of a point on an anterior view: the patient's right is on the image's left."""
    dx = (column - thyroid.column) * mm_per_pixel
    dy = (row - thyroid.row) * mm_per_pixel
    half = thyroid.half_height * mm_per_pixel
    side = "right" if dx < 0 else "left"
    if dy > half + 20.0:
        return "mediastinal"
    if dy < -(half + 10.0) or abs(dx) > 45.0:
        return f"{side}-ectopic-cervical" if abs(dx) > 5.0 else "ectopic-cervical"
    return f"{side}-{'upper' if dy < 0 else 'lower'}"


def uptake(late_input: np.ndarray, mm_per_pixel: float) -> np.ndarray:
    """The late image smoothed so that Poisson noise in single pixels is no focus, 0..1."""
    sigma = max(0.5, UPTAKE_SMOOTHING_MM / mm_per_pixel)
    smooth = cv2.GaussianBlur(np.clip(late_input, 0.0, None).astype(np.float32), (0, 0), sigmaX=sigma)
    return _unit(smooth)


def candidate_heat(late_map: np.ndarray, late_input: np.ndarray, mm_per_pixel: float) -> np.ndarray:
    """Where the late path's map and the late image's retained uptake agree, 0..1 over the network input.

    The map says which region made the network call the study abnormal; the retained tracer inside that region
    places the gland, as Guided Grad-CAM sharpens a coarse map with the image's own detail. Either alone does
    worse on the synthetic studies: the image alone also points at the salivary glands and the thyroid's
    remnant, the map alone is a few centimetres coarse (model card)."""
    size = late_input.shape[0]
    return _unit(to_grid(late_map, size, size) * uptake(late_input, mm_per_pixel))


def find_candidates(
    late_map: np.ndarray,
    late_input: np.ndarray,
    early_input: np.ndarray,
    mm_per_pixel: float,
    max_candidates: int = MAX_CANDIDATES,
) -> list[Candidate]:
    """Peaks of `candidate_heat` (the late input registered onto the early one), strongest first, with sites."""
    return find_peaks(candidate_heat(late_map, late_input, mm_per_pixel), early_input, mm_per_pixel, max_candidates)


def find_peaks(
    heat: np.ndarray, early_input: np.ndarray, mm_per_pixel: float, max_candidates: int = MAX_CANDIDATES
) -> list[Candidate]:
    """Local maxima of a 0..1 map over the early network input, strongest first, each with its site."""
    if float(heat.max()) <= 0:
        return []
    radius = max(1, round(PEAK_SEPARATION_MM / mm_per_pixel / 2.0))
    dilated = cv2.dilate(heat, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    rows, columns = np.nonzero((heat >= dilated) & (heat >= PEAK_THRESHOLD * float(heat.max())))
    order = np.argsort(-heat[rows, columns], kind="stable")
    thyroid = find_thyroid(early_input)
    out: list[Candidate] = []
    for index in order:
        r, c = int(rows[index]), int(columns[index])
        if any((c + 0.5 - k.column) ** 2 + (r + 0.5 - k.row) ** 2 < radius**2 for k in out):
            continue  # a plateau gives several equal maxima side by side
        out.append(Candidate(c + 0.5, r + 0.5, float(heat[r, c]), site_of(c + 0.5, r + 0.5, thyroid, mm_per_pixel)))
        if len(out) == max_candidates:
            break
    return out


def _unit(image: np.ndarray) -> np.ndarray:
    peak = float(image.max())
    return (image / peak if peak > 0 else image).astype(np.float32)


@dataclass(frozen=True)
class GlandScore:
    """Gland-level counts of paper 000 Table 1 for a set of patients."""

    found: int  # true positive glands: a candidate fell within them
    missed: int  # false negative glands
    false_foci: int  # candidates within no gland
    clean_normals: int  # true negatives: normal patients given no candidate

    def as_dict(self) -> dict[str, float | int]:
        tp, fn, fp, tn = self.found, self.missed, self.false_foci, self.clean_normals

        def ratio(a: int, b: int) -> float:
            return a / b if b else float("nan")

        sensitivity, ppv = ratio(tp, tp + fn), ratio(tp, tp + fp)
        return {
            "tp": tp,
            "fn": fn,
            "fp": fp,
            "tn": tn,
            "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "sensitivity": sensitivity,
            "specificity": ratio(tn, tn + fp),
            "ppv": ppv,
            "npv": ratio(tn, tn + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "false_focal_rate": ratio(fp, tp + fp),
        }


def score_patient(
    candidates: Sequence[tuple[float, float]],
    glands: Sequence[tuple[float, float, float]],
    mm_per_pixel: float,
) -> GlandScore:
    """One patient: candidates (column, row) against glands (column, row, diameter mm), same pixel grid."""
    hit = [False] * len(glands)
    false_foci = 0
    for column, row in candidates:
        inside = [
            i
            for i, (gc, gr, diameter) in enumerate(glands)
            if np.hypot(column - gc, row - gr) * mm_per_pixel <= diameter / 2.0 + HIT_MARGIN_MM
        ]
        for i in inside:
            hit[i] = True
        false_foci += not inside
    found = sum(hit)
    return GlandScore(found, len(glands) - found, false_foci, int(not glands and not candidates))


def total(scores: Sequence[GlandScore]) -> GlandScore:
    return GlandScore(
        sum(s.found for s in scores),
        sum(s.missed for s in scores),
        sum(s.false_foci for s in scores),
        sum(s.clean_normals for s in scores),
    )
