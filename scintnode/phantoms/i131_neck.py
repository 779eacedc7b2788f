"""Synthetic post-thyroidectomy 131I neck scans (anterior + posterior planar), with or without residual thyroid tissue.

Feeds the paper 004 network's training (numpy arrays) and the demo and tests (NM studies through nm.py). Synthetic,
never a patient: activity drawn in millimetres, blurred by a high-energy collimator with septal-penetration stars,
sampled with Poisson noise."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid

from scintnode.phantoms import nm

CLASSES: tuple[str, ...] = ("no_residual", "residual")
RESIDUAL_FRACTION = 346 / 446  # the class balance of paper 004's cohort
MATRIX = 256  # paper 004: 256 x 256
VIEWS = ("anterior", "posterior")
# Where residual foci may sit, in mm from the thyroid bed centre (u across, v towards the feet): the bed between the
# former lobes, up to the upper poles and the pyramidal lobe.
BED_HALF_WIDTH_MM = 22.0
BED_TOP_MM, BED_BOTTOM_MM = -28.0, 12.0


@dataclass(frozen=True)
class Focus:
    """One residual focus: DICOM image coordinates of the anterior frame, (0.5, 0.5) is the top-left pixel centre."""

    column: float
    row: float
    diameter_mm: float
    uptake: float  # peak concentration relative to soft-tissue background, before the camera blur


@dataclass(frozen=True)
class NeckPhantom:
    """One synthetic anterior + posterior 131I neck scan and its ground truth."""

    counts: np.ndarray  # uint16 (2, rows, cols): anterior, posterior
    label: str  # one of CLASSES
    pixel_spacing_mm: float
    bed_centre: tuple[float, float]  # (column, row) of the thyroid bed centre in the anterior frame
    foci: tuple[Focus, ...]  # empty for "no_residual"
    distractors: tuple[str, ...]  # what else was drawn, e.g. "oesophagus", "contamination"


@dataclass(frozen=True)
class _Grid:
    """Pixel centres in anatomy millimetres: origin at the thyroid bed, u to the image's right, v to the feet."""

    u: np.ndarray
    v: np.ndarray
    spacing: float
    origin_column: float  # bed centre in pixel indices
    origin_row: float

    @staticmethod
    def make(n: int, spacing: float, rng: np.random.Generator) -> _Grid:
        # Technologists centre the neck: the bed sits near the middle of the field.
        shift_u = rng.uniform(-15.0, 15.0)
        shift_v = rng.uniform(-20.0, 20.0)
        centre = (n - 1) / 2.0
        cols, rows = np.meshgrid(np.arange(n), np.arange(n))
        return _Grid(
            u=(cols - centre) * spacing - shift_u,
            v=(rows - centre) * spacing - shift_v,
            spacing=spacing,
            origin_column=centre + shift_u / spacing,
            origin_row=centre + shift_v / spacing,
        )

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        return self.origin_column + u / self.spacing + 0.5, self.origin_row + v / self.spacing + 0.5


def _blob(grid: _Grid, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Projected thickness (0..1) of an ellipsoid with semi-axes a (across) and b (along)."""
    p, q = (grid.u - cu) / a, (grid.v - cv) / b
    return np.sqrt(np.clip(1.0 - p * p - q * q, 0.0, None))


def synthesize(label: str, rng: np.random.Generator, matrix: int = MATRIX) -> NeckPhantom:
    """One phantom of class `label`; anatomy, uptake, distractors and counts vary with `rng`."""
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; known: {', '.join(CLASSES)}")
    if matrix < 64:
        raise ValueError(f"matrix {matrix} is too small for a neck scan (at least 64)")
    spacing = float(rng.uniform(470.0, 600.0)) / matrix
    grid = _Grid.make(matrix, spacing, rng)
    distractors: list[str] = []

    body = _body(grid, rng)
    physiological = _physiological(grid, rng, distractors)
    foci: list[Focus] = []
    remnant = np.zeros_like(grid.u)
    if label == "residual":
        remnant = _remnants(grid, rng, foci)
    if rng.random() < 0.35:
        distractors.append("oesophagus")  # the classic mimic: swallowed activity running through the bed
        physiological += rng.uniform(1.5, 5.0) * _blob(grid, rng.uniform(-4.0, 2.0), 60.0, 4.0, 110.0)
    contamination = np.zeros_like(grid.u)
    if rng.random() < 0.15:
        distractors.append("contamination")
        cu, cv = _outside_bed(rng)
        contamination = rng.uniform(20.0, 150.0) * _blob(grid, cu, cv, 3.0, 3.0)

    fwhm_mm = rng.uniform(11.0, 16.0)  # high-energy collimator at 364 keV
    counts_per_unit = rng.uniform(0.25, 0.6) * spacing * spacing  # low diagnostic dose, 5-10 min frames
    frames = []
    for view in VIEWS:
        # The posterior view sees the anterior neck through the neck: weaker, mirrored left to right.
        depth = 1.0 if view == "anterior" else rng.uniform(0.45, 0.65)
        hot = depth * (remnant + contamination) + physiological * (1.0 if view == "anterior" else 0.8)
        activity = body + hot
        activity = _camera(activity, hot, fwhm_mm, spacing, rng)
        expected = np.clip(activity, 0.0, None) * counts_per_unit + 0.02
        frame = rng.poisson(expected)
        frames.append(frame if view == "anterior" else frame[:, ::-1])
    counts = np.minimum(np.stack(frames), np.iinfo(np.uint16).max).astype(np.uint16)
    return NeckPhantom(
        counts=counts,
        label=label,
        pixel_spacing_mm=spacing,
        bed_centre=grid.to_pixel(0.0, 0.0),
        foci=tuple(foci),
        distractors=tuple(distractors),
    )


def _body(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Soft-tissue (blood-pool) background, level about 1: head, neck, shoulders and upper trunk."""
    u, v = grid.u, grid.v
    neck = rng.uniform(48.0, 60.0)
    head = _blob(grid, 0.0, -150.0, 80.0, 105.0) > 0
    trunk_half = np.clip(neck + (v - 35.0) * 2.5, neck, 175.0)
    body = head | ((np.abs(u) < np.where(v > 35.0, trunk_half, neck)) & (v > -90.0))
    liver = 0.6 * _blob(grid, -70.0, 235.0, 90.0, 60.0)
    return np.asarray(rng.uniform(0.8, 1.2) * body.astype(np.float64) + liver)


def _physiological(grid: _Grid, rng: np.random.Generator, distractors: list[str]) -> np.ndarray:
    """Salivary glands, mouth and nose, and a stomach below the neck: iodide uptake that is not thyroid."""
    out = np.zeros_like(grid.u)
    salivary = rng.uniform(2.0, 9.0)
    for side in (-1.0, 1.0):
        out += salivary * _blob(grid, side * rng.uniform(30.0, 38.0), rng.uniform(-62.0, -50.0), 12.0, 9.0)
        out += 1.2 * salivary * _blob(grid, side * rng.uniform(50.0, 60.0), rng.uniform(-105.0, -92.0), 11.0, 20.0)
    out += rng.uniform(1.0, 6.0) * _blob(grid, rng.uniform(-3.0, 3.0), -80.0, 20.0, 10.0)  # mouth
    out += rng.uniform(0.5, 3.0) * _blob(grid, 0.0, -125.0, 9.0, 12.0)  # nasal mucosa
    if rng.random() < 0.8:
        distractors.append("stomach")
        out += rng.uniform(3.0, 20.0) * _blob(grid, rng.uniform(50.0, 80.0), rng.uniform(200.0, 240.0), 45.0, 35.0)
    return out


def _remnants(grid: _Grid, rng: np.random.Generator, foci: list[Focus]) -> np.ndarray:
    """One to three small foci in the thyroid bed; their uptake spans faint to intense (log-uniform)."""
    out = np.zeros_like(grid.u)
    for _ in range(int(rng.choice((1, 2, 3), p=(0.5, 0.35, 0.15)))):
        cu = rng.uniform(-BED_HALF_WIDTH_MM, BED_HALF_WIDTH_MM)
        cv = rng.uniform(BED_TOP_MM, BED_BOTTOM_MM)
        diameter = rng.uniform(6.0, 18.0)
        uptake = float(np.exp(rng.uniform(np.log(5.0), np.log(300.0))))
        out = np.maximum(out, uptake * _blob(grid, cu, cv, diameter / 2.0, diameter / 2.0 * rng.uniform(0.8, 1.5)))
        column, row = grid.to_pixel(cu, cv)
        foci.append(Focus(column, row, diameter, uptake))
    return out


def _outside_bed(rng: np.random.Generator) -> tuple[float, float]:
    """A contamination spot (saliva on skin or clothing) anywhere in the field except the bed."""
    while True:
        cu, cv = rng.uniform(-150.0, 150.0), rng.uniform(-200.0, 200.0)
        if abs(cu) > BED_HALF_WIDTH_MM + 25.0 or not BED_TOP_MM - 25.0 < cv < BED_BOTTOM_MM + 25.0:
            return cu, cv


def _camera(
    activity: np.ndarray, hot: np.ndarray, fwhm_mm: float, spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Collimator blur plus the six-spoke star of septal penetration around hot sources (hexagonal holes)."""
    sigma = fwhm_mm / 2.3548 / spacing
    blurred = cv2.GaussianBlur(activity.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
    star = _star_kernel(spacing, rng)
    hot_core = np.clip(hot - 10.0, 0.0, None).astype(np.float32)  # only intense sources penetrate visibly
    spokes = cv2.filter2D(hot_core, -1, star, borderType=cv2.BORDER_CONSTANT)
    return np.asarray(blurred + spokes)


def _star_kernel(spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Three lines through the centre, 60 degrees apart, fading with distance; sums to a small fraction."""
    half = round(120.0 / spacing)
    size = 2 * half + 1
    kernel = np.zeros((size, size), dtype=np.float32)
    decay_px = rng.uniform(25.0, 50.0) / spacing
    base = rng.uniform(0.0, 30.0)
    for angle in (base, base + 60.0, base + 120.0):
        line = np.zeros_like(kernel)
        rad = np.deg2rad(angle)
        end = (round(half + half * np.cos(rad)), round(half + half * np.sin(rad)))
        start = (2 * half - end[0], 2 * half - end[1])
        cv2.line(line, start, end, 1.0, 1, cv2.LINE_AA)
        kernel += line
    rows, cols = np.indices(kernel.shape)
    kernel *= np.exp(-np.hypot(rows - half, cols - half) / decay_px).astype(np.float32)
    kernel[half, half] = 0.0
    return kernel * (rng.uniform(0.15, 0.35) / float(kernel.sum()))


def generate(count: int, seed: int, residual_fraction: float = RESIDUAL_FRACTION) -> list[NeckPhantom]:
    """`count` phantoms, round(count * residual_fraction) of them with residual tissue, in shuffled order."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 0.0 <= residual_fraction <= 1.0:
        raise ValueError(f"residual_fraction must lie in 0..1, got {residual_fraction}")
    rng = np.random.default_rng(seed)
    residual = round(count * residual_fraction)
    labels = rng.permutation(np.array(["residual"] * residual + ["no_residual"] * (count - residual)))
    return [synthesize(str(label), rng) for label in labels]


def class_index(labels: Sequence[str]) -> np.ndarray:
    """Class names to indices into CLASSES, with a clear error for an unknown name."""
    unknown = sorted(set(labels) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
    return np.array([CLASSES.index(label) for label in labels], dtype=np.int64)


def write_studies(out_dir: Path, count: int, seed: int, residual_fraction: float = RESIDUAL_FRACTION) -> Path:
    """Write each phantom as its own synthetic NM study (one 2-frame ANT/POST instance) and return the truth JSON.

    I-131 sodium iodide codes, a high-energy collimator, 5-10 minute frames 2-3 days after a 74-185 MBq oral
    dose; `ground_truth.json` maps each file (relative to `out_dir`) to its class and its foci."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phantoms = generate(count, seed, residual_fraction)
    rng = np.random.default_rng(seed + 1)
    first_day = datetime(2024, 2, 5, 9, 0)
    entries: list[dict[str, object]] = []
    for index, phantom in enumerate(phantoms, start=1):
        ident = f"SYNI131{seed % 1000:03d}{index:04d}"
        start = first_day + timedelta(days=index // 5, minutes=45 * (index % 5))
        # the sex ratio of paper 004's cohort
        patient = nm.synthetic_patient(ident, "I131NECK", index, rng, born=(1945, 2010), female_share=0.805)
        study = nm.StudyInfo(
            study_uid=generate_uid(),
            start=start,
            accession=ident,
            description="NM I-131 neck scan after thyroidectomy (synthetic)",
        )
        ds = nm.build_nm_image(
            phantom.counts,
            patient=patient,
            study=study,
            series_uid=generate_uid(),
            series_number=1,
            series_description="I-131 NECK ANT/POST (synthetic)",
            agent="i131-iodide",
            views=VIEWS,
            acquired=start + timedelta(minutes=10),
            injected=start - timedelta(hours=int(rng.integers(48, 73))),
            dose_mbq=float(round(rng.uniform(74.0, 185.0))),
            frame_duration_ms=int(rng.integers(5, 11)) * 60_000,
            pixel_spacing_mm=(phantom.pixel_spacing_mm, phantom.pixel_spacing_mm),
            body_part="NECK",
            collimator=("HEGP", "PARA"),
        )
        name = f"{ident}.dcm"
        nm.save(ds, out / name)
        entries.append(
            {
                "file": name,
                "label": phantom.label,
                "bed_centre": list(phantom.bed_centre),
                "foci": [asdict(focus) for focus in phantom.foci],
                "distractors": list(phantom.distractors),
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
                "generator": "scintnode.phantoms.i131_neck",
                "seed": seed,
                "count": count,
                "residual_fraction": residual_fraction,
                "classes": list(CLASSES),
                "coordinates": "DICOM image coordinates of frame 1 (anterior): (0.5, 0.5) is the top-left pixel centre",
                "images": entries,
            },
            indent=2,
        )
        + "\n"
    )
    return truth
