"""Synthetic dual-phase 99mTc-sestamibi parathyroid studies with pertechnetate thyroid scans (paper 000), with truth.

Feeds ParaNet's training (numpy arrays) and the demo and tests (NM studies through nm.py). Synthetic, never a
patient: anterior planar views of the neck and upper mediastinum drawn in millimetres on the thyroid phantom's
anatomy (scintnode.phantoms.thyroid), blurred by the camera and sampled with Poisson noise.

What the paper's readers face is drawn in: the thyroid takes up MIBI early and washes out by 2 h while most
abnormal glands retain it; some glands wash out as fast as the thyroid (a cause of false negatives); some
thyroid nodules take up MIBI early and keep part of it (a cause of false positives), but they show on the
pertechnetate scan, which a parathyroid gland never does; some patients have several abnormal glands."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydicom.uid import generate_uid

from scintnode.phantoms import nm
from scintnode.phantoms.thyroid import _background, _ellipsoid, _Grid, _salivary_glands, _thyroid

CLASSES: tuple[str, ...] = ("normal", "abnormal")
SITES: tuple[str, ...] = ("right-upper", "right-lower", "left-upper", "left-lower", "mediastinal", "ectopic-cervical")
MATRIX = 128
ABNORMAL_SHARE = 0.715  # paper 000: 452 of 632 patients had abnormal glands
THYROID_SCAN_SHARE = 0.813  # paper 000: thyroid subtraction in 514 of 632 patients
OTHER_DAY_SHARE = 0.5  # of the thyroid scans, those done on another day (the paper gives no share)
EARLY_MINUTES, LATE_MINUTES = 10, 120
Phase = Literal["early", "late", "thyroid"]

# Gland centres relative to the thyroid centre, in mm: u towards the image's right (the patient's left in an
# anterior view), v towards the feet. Upper glands lie behind the upper-middle lobes, lower ones at or below
# the lower poles, ectopic ones in the upper mediastinum or high in the neck (undescended).
_SITE_BOXES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "right-upper": ((-26.0, -18.0), (-16.0, -4.0)),
    "right-lower": ((-24.0, -14.0), (16.0, 30.0)),
    "left-upper": ((18.0, 26.0), (-16.0, -4.0)),
    "left-lower": ((14.0, 24.0), (16.0, 30.0)),
    "mediastinal": ((-10.0, 10.0), (45.0, 75.0)),
    "ectopic-cervical": ((-30.0, 30.0), (-42.0, -32.0)),
}
_SITE_WEIGHTS = (0.14, 0.31, 0.14, 0.31, 0.07, 0.03)


@dataclass(frozen=True)
class Gland:
    """An abnormal parathyroid gland: where it is (DICOM image coordinates per image) and how it behaves."""

    site: str  # one of SITES; "right" is the patient's right, on the image's left in an anterior view
    washout: Literal["slow", "fast"]  # fast: washes out like the thyroid, a cause of false negatives
    diameter_mm: float
    early: tuple[float, float]  # (column, row); (0.5, 0.5) is the centre of the top-left pixel
    late: tuple[float, float]
    thyroid: tuple[float, float] | None  # where it lies on the thyroid scan (invisible there)


@dataclass(frozen=True)
class ThyroidNodule:
    """A MIBI-avid thyroid nodule: bright early, partly retained late, and seen on the pertechnetate scan."""

    lobe: Literal["right", "left"]
    diameter_mm: float
    early: tuple[float, float]
    late: tuple[float, float]


@dataclass(frozen=True)
class ParathyroidCase:
    """One synthetic patient: early and late MIBI images, maybe a pertechnetate thyroid image, and the truth."""

    label: str  # one of CLASSES
    early: np.ndarray  # uint16 (rows, columns) counts
    late: np.ndarray
    thyroid: np.ndarray | None  # None: no thyroid scan was done
    pixel_spacing_mm: float  # of the MIBI images
    thyroid_spacing_mm: float
    thyroid_other_day: bool
    glands: tuple[Gland, ...]
    nodules: tuple[ThyroidNodule, ...]


@dataclass(frozen=True)
class _Focus:
    u: float
    v: float
    radius: float
    early: float  # activity relative to the early thyroid level
    late: float
    pertechnetate: float  # relative to the thyroid level of the pertechnetate scan


def synthesize(abnormal: bool, rng: np.random.Generator, matrix: int = MATRIX) -> ParathyroidCase:
    """One patient; anatomy, positions, uptake, washout and counts vary with `rng`."""
    if matrix < 64:
        raise ValueError(f"matrix {matrix} is too small for a neck and mediastinum image (at least 64)")
    anatomy_seed = int(rng.integers(0, 2**31))
    sites = _gland_sites(rng) if abnormal else []
    multiglandular = len(sites) > 2
    glands: list[tuple[str, str, _Focus]] = []
    for site in sites:
        (u0, u1), (v0, v1) = _SITE_BOXES[site]
        fast = rng.random() < (0.5 if multiglandular else 0.15)
        uptake = rng.uniform(0.7, 1.4)
        # Slow-washout glands keep most of their early activity; fast ones lose it like the thyroid does.
        kept = uptake * (rng.uniform(0.3, 0.5) if fast else rng.uniform(0.8, 1.0))
        focus = _Focus(rng.uniform(u0, u1), rng.uniform(v0, v1), rng.uniform(4.0, 8.0), uptake, kept, 0.0)
        glands.append((site, "fast" if fast else "slow", focus))
    nodules: list[tuple[str, _Focus]] = []
    if rng.random() < 0.2:
        side = "right" if rng.random() < 0.5 else "left"
        sign = -1.0 if side == "right" else 1.0
        uptake = rng.uniform(1.3, 1.9)
        focus = _Focus(
            sign * rng.uniform(13.0, 20.0),
            rng.uniform(-10.0, 10.0),
            rng.uniform(5.0, 8.0),
            uptake,
            uptake * rng.uniform(0.5, 0.8),
            rng.uniform(0.9, 1.4),
        )
        nodules.append((side, focus))

    spacing = float(rng.uniform(190.0, 250.0)) / matrix
    fwhm_mm = rng.uniform(7.0, 10.0)
    counts_per_mm2 = rng.uniform(1.5, 4.0)
    thyroid_level = rng.uniform(6.0, 12.0)  # early MIBI uptake of the thyroid over soft tissue
    levels = _PhaseLevels(
        thyroid=thyroid_level,
        salivary=rng.uniform(3.0, 7.0),
        heart=rng.uniform(3.0, 6.0),
        thyroid_late=rng.uniform(0.3, 0.5),
        salivary_late=rng.uniform(0.5, 0.7),
    )
    early_grid = _Grid.make(matrix, spacing, rng)
    late_grid = _Grid.make(matrix, spacing, rng)  # the patient is positioned again for the late image
    foci = [f for _, _, f in glands] + [f for _, f in nodules]
    early = _draw("early", early_grid, anatomy_seed, foci, levels, fwhm_mm, counts_per_mm2, rng)
    late = _draw("late", late_grid, anatomy_seed, foci, levels, fwhm_mm, counts_per_mm2 * 0.79, rng)

    thyroid: np.ndarray | None = None
    thyroid_grid: _Grid | None = None
    other_day = False
    thyroid_spacing = spacing
    if rng.random() < THYROID_SCAN_SHARE:
        other_day = bool(rng.random() < OTHER_DAY_SHARE)
        thyroid_matrix = int(rng.choice((matrix, 2 * matrix))) if other_day else matrix
        thyroid_spacing = float(rng.uniform(190.0, 250.0)) / thyroid_matrix if other_day else spacing
        thyroid_grid = _Grid.make(thyroid_matrix, thyroid_spacing, rng)
        tc_levels = _PhaseLevels(rng.uniform(8.0, 18.0), rng.uniform(4.0, 9.0), 0.0, 1.0, 1.0)
        thyroid = _draw("thyroid", thyroid_grid, anatomy_seed, foci, tc_levels, fwhm_mm, rng.uniform(1.5, 4.0), rng)
    return ParathyroidCase(
        label="abnormal" if abnormal else "normal",
        early=early,
        late=late,
        thyroid=thyroid,
        pixel_spacing_mm=spacing,
        thyroid_spacing_mm=thyroid_spacing,
        thyroid_other_day=other_day,
        glands=tuple(
            Gland(
                site=site,
                washout=washout,  # type: ignore[arg-type]
                diameter_mm=round(2.0 * f.radius, 2),
                early=early_grid.to_pixel(f.u, f.v),
                late=late_grid.to_pixel(f.u, f.v),
                thyroid=thyroid_grid.to_pixel(f.u, f.v) if thyroid_grid is not None else None,
            )
            for site, washout, f in glands
        ),
        nodules=tuple(
            ThyroidNodule(
                lobe=side,  # type: ignore[arg-type]
                diameter_mm=round(2.0 * f.radius, 2),
                early=early_grid.to_pixel(f.u, f.v),
                late=late_grid.to_pixel(f.u, f.v),
            )
            for side, f in nodules
        ),
    )


@dataclass(frozen=True)
class _PhaseLevels:
    thyroid: float  # early uptake over soft tissue
    salivary: float
    heart: float
    thyroid_late: float  # share of the early activity left at 2 h
    salivary_late: float


def _gland_sites(rng: np.random.Generator) -> list[str]:
    draw = rng.random()
    if draw < 0.05:  # multiglandular disease (secondary HPT): every eutopic gland enlarged
        return ["right-upper", "right-lower", "left-upper", "left-lower"]
    count = 2 if draw < 0.2 else 1
    chosen = rng.choice(len(SITES), size=count, replace=False, p=_SITE_WEIGHTS)
    return [SITES[int(i)] for i in chosen]


def _draw(
    phase: Phase,
    grid: _Grid,
    anatomy_seed: int,
    foci: list[_Focus],
    levels: _PhaseLevels,
    fwhm_mm: float,
    counts_per_mm2: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Counts of one image. The anatomy is drawn from `anatomy_seed`, so all three images show the same neck."""
    shape_rng = np.random.default_rng(anatomy_seed)
    tissue = _background(grid, shape_rng)
    salivary = _salivary_glands(grid, shape_rng)
    gland, _ = _thyroid("normal", grid, shape_rng)
    late = phase == "late"
    activity = tissue * (0.8 if late else 1.0)
    activity += levels.salivary * (levels.salivary_late if late else 1.0) * salivary
    thyroid_level = levels.thyroid * (levels.thyroid_late if late else 1.0)
    activity += thyroid_level * gland
    if phase != "thyroid":
        # The top of the heart, in the lower edge of fields that reach far enough down (MIBI only).
        activity += levels.heart * (0.9 if late else 1.0) * _ellipsoid(grid, 15.0, 140.0, 45.0, 40.0)
    for focus in foci:
        relative = {"early": focus.early, "late": focus.late, "thyroid": focus.pertechnetate}[phase]
        if relative > 0:
            activity += relative * levels.thyroid * _ellipsoid(grid, focus.u, focus.v, focus.radius, focus.radius)
    sigma_px = fwhm_mm / 2.3548 / grid.spacing
    blurred = cv2.GaussianBlur(activity.astype(np.float32), (0, 0), sigmaX=sigma_px, sigmaY=sigma_px)
    expected = np.clip(blurred, 0.0, None) * counts_per_mm2 * grid.spacing * grid.spacing
    counts: np.ndarray = np.minimum(rng.poisson(expected), np.iinfo(np.uint16).max).astype(np.uint16)
    return counts


def generate(patients: int, seed: int, matrix: int = MATRIX) -> list[ParathyroidCase]:
    """`patients` cases, `ABNORMAL_SHARE` of them abnormal (at least one of each class when patients >= 2)."""
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    rng = np.random.default_rng(seed)
    abnormal = round(patients * ABNORMAL_SHARE)
    if patients >= 2:
        abnormal = min(max(abnormal, 1), patients - 1)
    flags = np.array([True] * abnormal + [False] * (patients - abnormal))
    rng.shuffle(flags)
    return [synthesize(bool(flag), rng, matrix) for flag in flags]


def write_studies(out_dir: Path, patients: int, seed: int) -> Path:
    """Write each case as synthetic NM studies and return the ground-truth JSON's path.

    Per patient: one MIBI study with an early (~10 min) and a late (~120 min) series, one single-frame STATIC
    anterior instance each; when a thyroid scan was done, a pertechnetate series in the same study (after the
    dual-phase images) or, on another day, in another study. `ground_truth.json` lists the files per patient,
    the class and every gland and MIBI-avid nodule with its position on each image."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = generate(patients, seed)
    rng = np.random.default_rng(seed + 1)
    first_day = datetime(2024, 2, 5, 8, 0)
    entries: list[dict[str, object]] = []
    for index, case in enumerate(cases, start=1):
        ident = f"SYNPTH{seed % 1000:03d}{index:04d}"
        patient = nm.synthetic_patient(ident, "PARATHYROID", index, rng, born=(1940, 2000), female_share=0.75)
        injected = first_day + timedelta(days=index // 4, minutes=45 * (index % 4))
        mibi_study = nm.StudyInfo(
            generate_uid(), injected, accession=f"{ident}A", description="NM parathyroid scintigraphy (synthetic)"
        )
        files: dict[str, str] = {}
        uids: dict[str, str] = {}
        early_at = injected + timedelta(minutes=EARLY_MINUTES + int(rng.integers(-2, 3)))
        late_at = injected + timedelta(minutes=LATE_MINUTES + int(rng.integers(-10, 11)))
        mibi = {
            "early": (case.early, early_at, "PARATHYROID EARLY 10MIN"),
            "late": (case.late, late_at, "PARATHYROID LATE 2H"),
        }
        for number, (slot, (counts, acquired, description)) in enumerate(mibi.items(), start=1):
            ds = nm.build_nm_image(
                counts[np.newaxis],
                patient=patient,
                study=mibi_study,
                series_uid=generate_uid(),
                series_number=number,
                series_description=f"{description} (synthetic)",
                agent="sestamibi",
                views=("anterior",),
                acquired=acquired,
                injected=injected,
                dose_mbq=float(round(rng.uniform(555.0, 740.0))),
                frame_duration_ms=600_000,
                pixel_spacing_mm=(case.pixel_spacing_mm, case.pixel_spacing_mm),
                body_part="NECK",
            )
            files[slot] = f"{ident}_{slot}.dcm"
            uids[slot] = str(ds.SOPInstanceUID)
            nm.save(ds, out / files[slot])
        thyroid_study = mibi_study
        if case.thyroid is not None:
            if case.thyroid_other_day:
                tc_injected = injected + timedelta(days=int(rng.integers(1, 8)), hours=1)
                thyroid_study = nm.StudyInfo(
                    generate_uid(),
                    tc_injected,
                    accession=f"{ident}B",
                    description="NM thyroid scintigraphy (synthetic)",
                )
            else:
                tc_injected = late_at + timedelta(minutes=15)
            ds = nm.build_nm_image(
                case.thyroid[np.newaxis],
                patient=patient,
                study=thyroid_study,
                series_uid=generate_uid(),
                series_number=3,
                series_description="THYROID TcO4 (synthetic)",
                agent="pertechnetate",
                views=("anterior",),
                acquired=tc_injected + timedelta(minutes=int(rng.integers(15, 26))),
                injected=tc_injected,
                dose_mbq=float(round(rng.uniform(74.0, 185.0))),
                pixel_spacing_mm=(case.thyroid_spacing_mm, case.thyroid_spacing_mm),
                body_part="NECK",
            )
            files["thyroid"] = f"{ident}_thyroid.dcm"
            uids["thyroid"] = str(ds.SOPInstanceUID)
            nm.save(ds, out / files["thyroid"])
        entries.append(
            {
                "patient_id": ident,
                "label": case.label,
                "files": files,
                "sop_instance_uids": uids,
                "mibi_study_instance_uid": mibi_study.study_uid,
                "thyroid_study_instance_uid": thyroid_study.study_uid if case.thyroid is not None else None,
                "thyroid_other_day": case.thyroid_other_day,
                "pixel_spacing_mm": case.pixel_spacing_mm,
                "glands": [asdict(g) for g in case.glands],
                "nodules": [asdict(n) for n in case.nodules],
            }
        )
    truth = out / "ground_truth.json"
    truth.write_text(
        json.dumps(
            {
                "synthetic": True,
                "generator": "scintnode.phantoms.parathyroid",
                "seed": seed,
                "patients": patients,
                "classes": list(CLASSES),
                "coordinates": "DICOM image coordinates (column, row): (0.5, 0.5) is the centre of the top-left pixel",
                "sites": "the patient's right/left; in anterior views the patient's right is on the image's left",
                "cases": entries,
            },
            indent=2,
        )
        + "\n"
    )
    return truth
