"""Synthetic 99mTc-pertechnetate thyroid scintigrams of the four classes of paper 002, with ground truth.

Feeds training (numpy arrays) and the demo and tests (NM studies through nm.py). Synthetic, never a patient:
an anterior planar view of the neck drawn in millimetres, blurred by the camera and sampled with Poisson noise."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydicom.uid import generate_uid

from scintnode.phantoms import nm

CLASSES: tuple[str, ...] = ("graves", "normal", "subacute_thyroiditis", "tumour")
MATRICES: tuple[int, ...] = (128, 256)

# Where each class sits on the scale that matters in a pertechnetate scan: thyroid and salivary uptake relative
# to soft-tissue background (peak concentration x thickness over background), and gland size.
_THYROID_TO_BACKGROUND = {
    "graves": (30.0, 70.0),
    "normal": (8.0, 18.0),
    "subacute_thyroiditis": (0.3, 1.8),
    "tumour": (8.0, 18.0),
}
_SALIVARY_TO_BACKGROUND = {
    "graves": (1.5, 4.0),
    "normal": (4.0, 9.0),
    "subacute_thyroiditis": (6.0, 12.0),
    "tumour": (4.0, 9.0),
}
_GLAND_SCALE = {
    "graves": (1.3, 1.6),
    "normal": (0.85, 1.15),
    "subacute_thyroiditis": (0.85, 1.15),
    "tumour": (0.85, 1.15),
}


@dataclass(frozen=True)
class Nodule:
    """A tumour's nodule in the image: DICOM image coordinates, (0.5, 0.5) is the top-left pixel's centre."""

    kind: Literal["cold", "hot"]
    lobe: Literal["right", "left"]  # patient side; the right lobe is on the image's left in an anterior view
    column: float
    row: float
    diameter_mm: float


@dataclass(frozen=True)
class ThyroidPhantom:
    """One synthetic anterior thyroid scintigram and its ground truth."""

    counts: np.ndarray  # uint16 (rows, cols)
    label: str  # one of CLASSES
    pixel_spacing_mm: float
    thyroid_centre: tuple[float, float]  # (column, row), DICOM image coordinates like Nodule
    nodule: Nodule | None  # only for "tumour"


def synthesize(label: str, rng: np.random.Generator, matrix: int | None = None) -> ThyroidPhantom:
    """One phantom of class `label`; position, size, rotation, uptake and counts vary with `rng`."""
    if label not in CLASSES:
        raise ValueError(f"unknown thyroid class {label!r}; known: {', '.join(CLASSES)}")
    n = int(matrix if matrix is not None else rng.choice(MATRICES, p=(0.7, 0.3)))
    if n < 32:
        raise ValueError(f"matrix {n} is too small for a thyroid scintigram (at least 32)")
    spacing = float(rng.uniform(190.0, 250.0)) / n
    grid = _Grid.make(n, spacing, rng)

    activity = _background(grid, rng)
    salivary = rng.uniform(*_SALIVARY_TO_BACKGROUND[label])
    activity += salivary * _salivary_glands(grid, rng)
    gland, nodule = _thyroid(label, grid, rng)
    activity += rng.uniform(*_THYROID_TO_BACKGROUND[label]) * gland

    fwhm_mm = rng.uniform(7.0, 10.0)
    sigma_px = fwhm_mm / 2.3548 / spacing
    activity = cv2.GaussianBlur(activity.astype(np.float32), (0, 0), sigmaX=sigma_px, sigmaY=sigma_px)
    counts_per_mm2 = rng.uniform(1.5, 4.0)  # background level: dose, time and patient size together
    expected = np.clip(activity, 0.0, None) * counts_per_mm2 * spacing * spacing
    counts = np.minimum(rng.poisson(expected), np.iinfo(np.uint16).max).astype(np.uint16)
    return ThyroidPhantom(
        counts=counts,
        label=label,
        pixel_spacing_mm=spacing,
        thyroid_centre=grid.to_pixel(0.0, 0.0),
        nodule=nodule,
    )


def generate(per_class: int, seed: int, matrix: int | None = None) -> list[ThyroidPhantom]:
    """`per_class` phantoms of each class, interleaved (graves, normal, subacute, tumour, graves, ...)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    return [synthesize(label, rng, matrix) for _ in range(per_class) for label in CLASSES]


def generate_arrays(per_class: int, seed: int, matrix: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Counts (N, matrix, matrix) uint16 and class indices into CLASSES (N,) int64, for training and tests."""
    phantoms = generate(per_class, seed, matrix)
    images = np.stack([p.counts for p in phantoms])
    labels = np.array([CLASSES.index(p.label) for p in phantoms], dtype=np.int64)
    return images, labels


def write_studies(out_dir: Path, per_class: int, seed: int) -> Path:
    """Write each phantom as its own synthetic NM study and return the ground-truth JSON's path.

    One patient, one study, one series, one single-frame STATIC anterior instance per phantom, with
    Tc-99m pertechnetate codes; `ground_truth.json` maps each file (relative to `out_dir`) to its class and,
    for tumours, the nodule."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phantoms = generate(per_class, seed)
    rng = np.random.default_rng(seed + 1)
    first_day = datetime(2024, 1, 8, 8, 30)
    entries: list[dict[str, object]] = []
    for index, phantom in enumerate(phantoms, start=1):
        ident = f"SYNTHY{seed % 1000:03d}{index:04d}"
        start = first_day + timedelta(days=index // 6, minutes=40 * (index % 6))
        # the sex ratio of paper 002's cohort
        patient = nm.synthetic_patient(ident, "THYROID", index, rng, born=(1940, 2005), female_share=0.73)
        study = nm.StudyInfo(
            study_uid=generate_uid(),
            start=start,
            accession=ident,
            description="NM thyroid scintigraphy (synthetic)",
        )
        ds = nm.build_nm_image(
            phantom.counts[np.newaxis],
            patient=patient,
            study=study,
            series_uid=generate_uid(),
            series_number=1,
            series_description="THYROID ANT Tc99m (synthetic)",
            agent="pertechnetate",
            views=("anterior",),
            acquired=start + timedelta(minutes=int(rng.integers(15, 26))),
            injected=start,
            dose_mbq=float(round(rng.uniform(74.0, 185.0))),
            pixel_spacing_mm=(phantom.pixel_spacing_mm, phantom.pixel_spacing_mm),
            body_part="THYROID",
        )
        name = f"{ident}.dcm"
        nm.save(ds, out / name)
        entries.append(
            {
                "file": name,
                "label": phantom.label,
                "thyroid_centre": list(phantom.thyroid_centre),
                "nodule": asdict(phantom.nodule) if phantom.nodule else None,
                "pixel_spacing_mm": phantom.pixel_spacing_mm,
                "study_instance_uid": study.study_uid,
                "sop_instance_uid": str(ds.SOPInstanceUID),
            }
        )
    truth = out / "ground_truth.json"
    truth.write_text(
        json.dumps(
            {
                "synthetic": True,
                "generator": "scintnode.phantoms.thyroid",
                "seed": seed,
                "per_class": per_class,
                "classes": list(CLASSES),
                "coordinates": "DICOM image coordinates: (0.5, 0.5) is the centre of the top-left pixel",
                "images": entries,
            },
            indent=2,
        )
        + "\n"
    )
    return truth


@dataclass(frozen=True)
class _Grid:
    """Pixel centres in anatomy coordinates (mm): origin at the thyroid centre, u to the image's right
    (the patient's left in an anterior view), v towards the feet; the patient may sit shifted and tilted."""

    u: np.ndarray
    v: np.ndarray
    spacing: float
    origin_column: float  # thyroid centre in pixel indices
    origin_row: float
    angle: float  # radians, image rotation of the anatomy

    @staticmethod
    def make(n: int, spacing: float, rng: np.random.Generator) -> _Grid:
        shift_x = rng.uniform(-10.0, 10.0)
        shift_y = rng.uniform(12.0, 30.0)  # the thyroid sits low in the field, salivary glands above it
        angle = np.deg2rad(rng.uniform(-8.0, 8.0))
        centre = (n - 1) / 2.0
        cols, rows = np.meshgrid(np.arange(n), np.arange(n))
        x = (cols - centre) * spacing - shift_x
        y = (rows - centre) * spacing - shift_y
        cos, sin = np.cos(angle), np.sin(angle)
        return _Grid(
            u=cos * x + sin * y,
            v=-sin * x + cos * y,
            spacing=spacing,
            origin_column=centre + shift_x / spacing,
            origin_row=centre + shift_y / spacing,
            angle=float(angle),
        )

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Anatomy (u, v) mm to DICOM image coordinates (column, row) with pixel centres at +0.5."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x = cos * u - sin * v
        y = sin * u + cos * v
        return float(self.origin_column + x / self.spacing + 0.5), float(self.origin_row + y / self.spacing + 0.5)


def _ellipsoid(grid: _Grid, cu: float, cv: float, a: float, b: float, tilt_deg: float = 0.0) -> np.ndarray:
    """Projected thickness (0..1) of an ellipsoid with semi-axes a (across) and b (along); a positive
    tilt leans its upper end towards +u."""
    t = np.deg2rad(tilt_deg)
    du, dv = grid.u - cu, grid.v - cv
    p = (np.cos(t) * du + np.sin(t) * dv) / a
    q = (-np.sin(t) * du + np.cos(t) * dv) / b
    thickness: np.ndarray = np.sqrt(np.clip(1.0 - p * p - q * q, 0.0, None))
    return thickness


def _background(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Soft tissue: neck, head above and shoulders below, with faint great vessels; background level is 1."""
    u, v = grid.u, grid.v
    neck_half = rng.uniform(48.0, 62.0)
    half_width = np.where(v > 55.0, neck_half + (v - 55.0) * 1.8, np.where(v < -60.0, neck_half + 15.0, neck_half))
    body = (np.abs(u) < half_width).astype(np.float64)
    body *= np.where(v > 55.0, 1.25, np.where(v < -60.0, 0.8, 1.0))
    vessels = 0.35 * (np.exp(-(((np.abs(u) - 24.0) / 4.0) ** 2)) * (np.abs(v) < 70.0))
    mouth = 1.5 * _ellipsoid(grid, rng.uniform(-3.0, 3.0), -78.0, 22.0, 9.0)
    level = rng.uniform(0.85, 1.15)
    tissue: np.ndarray = level * (body + vessels) + rng.uniform(0.5, 1.5) * mouth
    return tissue


def _salivary_glands(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Submandibular glands below the jaw and parotids high and lateral, peak 1."""
    out = np.zeros_like(grid.u)
    for side in (-1.0, 1.0):
        out += _ellipsoid(grid, side * rng.uniform(30.0, 38.0), rng.uniform(-62.0, -52.0), 13.0, 9.0, side * 20.0)
        out += 1.2 * _ellipsoid(grid, side * rng.uniform(50.0, 58.0), rng.uniform(-104.0, -94.0), 11.0, 20.0)
    return out


def _thyroid(label: str, grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, Nodule | None]:
    """The butterfly gland (two lobes, isthmus, sometimes a pyramidal lobe), peak about 1, and any nodule."""
    s = rng.uniform(*_GLAND_SCALE[label])
    widen = rng.uniform(1.1, 1.35) if label == "graves" else 1.0  # Graves' lobes are also rounder
    lobe_a, lobe_b = 8.0 * s * widen, 22.0 * s
    offset = 17.0 * s * (1.0 + 0.5 * (widen - 1.0))
    right_size = 1.0
    left_size = rng.uniform(0.82, 1.0)  # the right lobe is usually the larger
    tilt = rng.uniform(8.0, 16.0)
    # Upper poles diverge: the right lobe (image left) leans its top outwards, the left lobe mirrors it.
    right = right_size * _ellipsoid(grid, -offset, 0.0, lobe_a * right_size, lobe_b * right_size, -tilt)
    left = left_size * _ellipsoid(grid, offset, 0.0, lobe_a * left_size, lobe_b * left_size, tilt)
    isthmus = rng.uniform(0.3, 0.5) * _ellipsoid(grid, 0.0, 9.0 * s, offset * 0.75, 5.0 * s)
    pyramidal = np.zeros_like(grid.u)
    if label == "graves" and rng.random() < 0.3:
        pyramidal = 0.35 * _ellipsoid(grid, rng.uniform(-6.0, 2.0), -8.0 * s, 3.0 * s, 15.0 * s)

    nodule: Nodule | None = None
    if label == "subacute_thyroiditis" and rng.random() < 0.3:
        # Focal form: one lobe keeps some uptake while the rest is suppressed.
        if rng.random() < 0.5:
            right = right * rng.uniform(2.0, 4.0)
        else:
            left = left * rng.uniform(2.0, 4.0)
    if label == "tumour":
        nodule, right, left, isthmus = _nodule(grid, rng, offset, lobe_a, lobe_b, right, left, isthmus)
    return np.maximum.reduce([right, left, isthmus, pyramidal]), nodule


def _nodule(
    grid: _Grid,
    rng: np.random.Generator,
    offset: float,
    lobe_a: float,
    lobe_b: float,
    right: np.ndarray,
    left: np.ndarray,
    isthmus: np.ndarray,
) -> tuple[Nodule, np.ndarray, np.ndarray, np.ndarray]:
    """A cold nodule (a hole in one lobe) or, less often, a hot autonomous nodule suppressing the rest."""
    side: Literal["right", "left"] = "right" if rng.random() < 0.5 else "left"
    sign = -1.0 if side == "right" else 1.0
    cu = sign * offset + rng.uniform(-0.3, 0.3) * lobe_a
    cv = rng.uniform(-0.45, 0.45) * lobe_b
    kind: Literal["cold", "hot"] = "cold" if rng.random() < 0.75 else "hot"
    # At least 14 mm across: smaller nodules are not resolved by a gamma camera, and paper 002 kept only
    # tumours whose scintigram agreed with the final diagnosis.
    if kind == "cold":
        radius = rng.uniform(7.0, 11.0)
        hole = _ellipsoid(grid, cu, cv, radius, radius)
        keep = 1.0 - rng.uniform(0.8, 0.95) * hole
        if side == "right":
            right = right * keep
        else:
            left = left * keep
    else:
        radius = rng.uniform(7.0, 11.0)
        suppress = rng.uniform(0.15, 0.45)
        right, left, isthmus = right * suppress, left * suppress, isthmus * suppress
        hot = rng.uniform(1.0, 1.6) * _ellipsoid(grid, cu, cv, radius, radius)
        if side == "right":
            right = np.maximum(right, hot)
        else:
            left = np.maximum(left, hot)
    column, row = grid.to_pixel(cu, cv)
    return Nodule(kind, side, float(column), float(row), float(2.0 * radius)), right, left, isthmus


def class_index(labels: Sequence[str]) -> np.ndarray:
    """Class names to indices into CLASSES, with a clear error for an unknown name."""
    unknown = sorted(set(labels) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown thyroid classes {unknown}; known: {', '.join(CLASSES)}")
    return np.array([CLASSES.index(label) for label in labels], dtype=np.int64)
