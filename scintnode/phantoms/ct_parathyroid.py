"""Synthetic dual-phase neck CT (unenhanced + contrast-enhanced) with parathyroid glands as voxel truth.

Feeds the ct-parathyroid U-Net's training (train/ct_parathyroid.py), tests and `scintnode phantoms
ct-parathyroid`, which writes the two series through phantoms/ct.py plus the gland masks (.npy + JSON).

Anatomy, in mm on a patient-space grid (x to the patient's left, y posterior, z superior, as DICOM LPS):
neck outline with subcutaneous fat, muscles, spine with canal, trachea (air), oesophagus, thyroid lobes
with isthmus (dense from iodine, enhancing strongly), carotid arteries and jugular veins (bright only
when enhanced), lymph nodes (faint enhancement: the look-alikes), and 2-4 parathyroid glands of a few mm,
mostly behind the thyroid lobes, some ectopic (low in the neck, retro-oesophageal, in the carotid
sheath). Glands are darker than thyroid before contrast and enhance after it, the cue paper 001 uses.
Nothing here is patient data; every file says SYNTHETIC."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid

from scintnode.phantoms.ct import Contrast, build_ct_series
from scintnode.phantoms.nm import Patient, StudyInfo, save

SHAPE = (64, 128, 128)  # slices, rows, columns
SPACING_MM = (1.0, 1.0, 1.0)  # slice, row, column
NOISE_HU = 12.0
# Hounsfield units (unenhanced, enhanced) per tissue, with a per-patient jitter added.
HU = {
    "fat": (-100.0, -95.0),
    "muscle": (50.0, 60.0),
    "bone": (450.0, 460.0),
    "canal": (25.0, 30.0),
    "air": (-960.0, -960.0),
    "oesophagus": (40.0, 70.0),
    "thyroid": (105.0, 210.0),
    "artery": (40.0, 320.0),
    "vein": (40.0, 190.0),
    "node": (40.0, 85.0),
    "gland": (45.0, 150.0),
}
ECTOPIC_SITES = ("low neck", "retro-oesophageal", "carotid sheath")


@dataclass(frozen=True)
class Gland:
    """One synthetic parathyroid gland: an ellipsoid, its truth label in the mask, where it sits."""

    number: int  # its value in the mask
    centre_mm: tuple[float, float, float]  # x, y, z from the volume centre (LPS directions)
    radii_mm: tuple[float, float, float]
    side: str  # "right" or "left" of the patient
    site: str  # "superior", "inferior" or one of ECTOPIC_SITES
    ectopic: bool


@dataclass(frozen=True)
class NeckPhantom:
    """Both phases on one grid (slices, rows, columns) in HU, and the gland labels on the same grid."""

    unenhanced: np.ndarray  # float32
    enhanced: np.ndarray  # float32
    labels: np.ndarray  # uint8, 0 background, n = Gland.number
    glands: tuple[Gland, ...]
    spacing_mm: tuple[float, float, float]


class _Grid:
    """Coordinates (mm) of every voxel relative to the volume centre, shifted by the patient's offset."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], shift: np.ndarray) -> None:
        z, y, x = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True))
        self.z = z[:, None, None] - shift[2]
        self.y = y[None, :, None] - shift[1]
        self.x = x[None, None, :] - shift[0]

    def ellipsoid(self, centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
        inside: np.ndarray = (
            ((self.x - centre[0]) / radii[0]) ** 2
            + ((self.y - centre[1]) / radii[1]) ** 2
            + ((self.z - centre[2]) / radii[2]) ** 2
        ) <= 1.0
        return inside

    def cylinder(self, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
        inside = ((self.x - centre[0]) / radii[0]) ** 2 + ((self.y - centre[1]) / radii[1]) ** 2 <= 1.0
        return np.broadcast_to(inside, np.broadcast_shapes(inside.shape, self.z.shape))


def synthesize(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = SHAPE,
    spacing_mm: tuple[float, float, float] = SPACING_MM,
) -> NeckPhantom:
    """One synthetic neck with 2-4 glands; every size, position and density varies with `rng`."""
    grid = _Grid(shape, spacing_mm, rng.normal(0.0, 3.0, size=3).astype(np.float32))
    width, depth = rng.uniform(48, 58), rng.uniform(42, 50)
    jitter = {tissue: rng.normal(0.0, 6.0) for tissue in HU}
    layers: list[tuple[str, np.ndarray]] = [
        ("fat", grid.cylinder((0.0, 0.0), (width, depth))),
        ("muscle", grid.cylinder((0.0, 1.0), (width - 6, depth - 6))),
        ("bone", grid.cylinder((0.0, 24.0), (13.0, 11.0))),
        ("canal", grid.cylinder((0.0, 36.0), (6.0, 5.0))),
        ("oesophagus", grid.cylinder((-3.0, -5.0), (6.0, 4.0))),
    ]
    trachea_radius = rng.uniform(7.0, 9.0)
    layers.append(("muscle", grid.cylinder((0.0, -17.0), (trachea_radius + 2, trachea_radius + 2))))
    layers.append(("air", grid.cylinder((0.0, -17.0), (trachea_radius, trachea_radius))))
    lobe = (rng.uniform(6, 8), rng.uniform(8, 10), rng.uniform(16, 22))
    thyroid_z = rng.uniform(-4.0, 4.0)
    for sign in (-1.0, 1.0):
        layers.append(("thyroid", grid.ellipsoid((sign * 16.0, -16.0, thyroid_z), lobe)))
        layers.append(("artery", grid.cylinder((sign * 27.0, -8.0), (4.0, 4.0))))
        layers.append(("vein", grid.cylinder((sign * 35.0, -12.0), (rng.uniform(4, 6), rng.uniform(3, 5)))))
    layers.append(("thyroid", grid.ellipsoid((0.0, -27.0, thyroid_z - 4), (12.0, 3.0, 5.0))))
    for _ in range(rng.integers(1, 5)):
        side = rng.choice([-1.0, 1.0])
        centre = (side * rng.uniform(32, 42), rng.uniform(-2, 12), rng.uniform(-25, 25))
        layers.append(("node", grid.ellipsoid(centre, tuple(rng.uniform(2.5, 5.0, size=3)))))
    glands = _glands(rng, thyroid_z, lobe[2])
    labels = np.zeros(shape, dtype=np.uint8)
    for gland in glands:
        mask = grid.ellipsoid(gland.centre_mm, gland.radii_mm)
        labels[mask] = gland.number
        layers.append(("gland", mask))
    phases = []
    for phase in (0, 1):
        hu = np.full(shape, HU["air"][0], dtype=np.float32)
        for tissue, mask in layers:
            hu[mask] = HU[tissue][phase] + jitter[tissue]
        phases.append(_scanner_look(hu, rng))
    return NeckPhantom(phases[0], phases[1], labels, tuple(glands), spacing_mm)


def _glands(rng: np.random.Generator, thyroid_z: float, lobe_half_height: float) -> list[Gland]:
    """2-4 glands, as in secondary hyperparathyroidism: each eutopic slot kept with some chance, ~15 % ectopic."""
    slots = [(side, site) for side in ("right", "left") for site in ("superior", "inferior")]
    keep = [s for s in slots if rng.random() < 0.8]
    if len(keep) < 2:
        keep = [slots[i] for i in sorted(rng.choice(len(slots), size=2, replace=False))]
    glands: list[Gland] = []
    for number, (side, site) in enumerate(keep, start=1):
        sign = -1.0 if side == "right" else 1.0  # LPS: patient right is -x
        radii = (rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0), rng.uniform(2.5, 5.0))
        ectopic = rng.random() < 0.15
        if ectopic:
            where = str(rng.choice(ECTOPIC_SITES))
            centre = {
                "low neck": (sign * rng.uniform(3, 10), rng.uniform(-26, -18), thyroid_z - lobe_half_height - 8),
                "retro-oesophageal": (sign * rng.uniform(2, 6), rng.uniform(2, 5), rng.uniform(-12, 12)),
                "carotid sheath": (sign * rng.uniform(27, 31), rng.uniform(-2, 0), rng.uniform(8, 20)),
            }[where]
        else:
            where = site
            z = thyroid_z + (0.45 if site == "superior" else -0.55) * lobe_half_height
            centre = (sign * rng.uniform(14, 19), rng.uniform(-6.5, -4.5), z + rng.normal(0, 2))
        glands.append(
            Gland(number, (float(centre[0]), float(centre[1]), float(centre[2])), radii, side, where, ectopic)
        )
    return glands


def _scanner_look(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial-volume blur in plane and quantum noise, as a reconstructed CT slice shows them."""
    blurred = np.stack([cv2.GaussianBlur(plane, (0, 0), sigmaX=0.7) for plane in hu])
    return (blurred + rng.normal(0.0, NOISE_HU, size=hu.shape)).astype(np.float32)


def generate(count: int, seed: int) -> list[NeckPhantom]:
    rng = np.random.default_rng(seed)
    return [synthesize(rng) for _ in range(count)]


def write_studies(
    out_dir: Path,
    count: int,
    seed: int,
    shape: tuple[int, int, int] = SHAPE,
    spacing_mm: tuple[float, float, float] = SPACING_MM,
) -> Path:
    """`count` synthetic patients, each one study with an unenhanced and an enhanced series (one file per
    slice, under <patient>/native and <patient>/enhanced), the gland labels as <patient>/labels.npy (on the
    unenhanced series' slices, in instance order) and ground_truth.json describing all of them.

    `shape` (slices, rows, columns) and `spacing_mm` set each series' geometry; the neck keeps its size in mm,
    so e.g. (200, 512, 512) at (1.0, 0.45, 0.45) is a clinical study's size around the same anatomy."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        phantom = synthesize(rng, shape, spacing_mm)
        pid = f"SYNCT{seed:03d}{index:03d}"
        case = out / pid
        entry = write_phantom(phantom, case, pid, datetime(2026, 1, 5, 9, 0) + timedelta(days=index))
        cases.append(entry)
    truth = {
        "synthetic": True,
        "statement": "Synthetic dual-phase neck CT phantoms (scintnode); no patient data, no clinical truth.",
        "seed": seed,
        "spacing_mm": list(spacing_mm),
        "cases": cases,
    }
    path = out / "ground_truth.json"
    path.write_text(json.dumps(truth, indent=2) + "\n")
    return path


def write_phantom(phantom: NeckPhantom, folder: Path, patient_id: str, start: datetime) -> dict[str, object]:
    """Write one phantom's two series and labels into `folder`; returns its ground-truth entry."""
    folder.mkdir(parents=True, exist_ok=True)
    patient = Patient(patient_id, f"SYNTHETIC^NECKCT^{patient_id}", date(1958, 3, 14), "F")
    study = StudyInfo(generate_uid(), start, accession=f"A{patient_id}", description="NECK CT DUAL PHASE (synthetic)")
    frame = generate_uid()
    slices, rows, columns = phantom.unenhanced.shape
    sz, sy, sx = phantom.spacing_mm
    origin = (-(columns - 1) / 2.0 * sx, -(rows - 1) / 2.0 * sy, -(slices - 1) / 2.0 * sz)
    series = {}
    for name, hu, number, minutes in (("native", phantom.unenhanced, 2, 2), ("enhanced", phantom.enhanced, 3, 5)):
        acquired = start + timedelta(minutes=minutes)
        contrast = Contrast(start=acquired - timedelta(seconds=70)) if name == "enhanced" else None
        datasets = build_ct_series(
            hu,
            patient=patient,
            study=study,
            series_uid=generate_uid(),
            series_number=number,
            series_description=f"NECK {'C+ 70s' if contrast else 'NATIVE'} (synthetic)",
            acquired=acquired,
            frame_of_reference_uid=frame,
            spacing_mm=phantom.spacing_mm,
            origin_mm=origin,
            contrast=contrast,
        )
        (folder / name).mkdir(exist_ok=True)
        files = [save(ds, folder / name / f"{k + 1:04d}.dcm") for k, ds in enumerate(datasets)]
        series[name] = {
            "series_instance_uid": str(datasets[0].SeriesInstanceUID),
            "files": [str(f.relative_to(folder.parent)) for f in files],
        }
    np.save(folder / "labels.npy", phantom.labels)
    return {
        "patient_id": patient_id,
        "synthetic": True,
        "study_instance_uid": study.study_uid,
        "frame_of_reference_uid": frame,
        "unenhanced": series["native"],
        "enhanced": series["enhanced"],
        "labels": str((folder / "labels.npy").relative_to(folder.parent)),
        "glands": [
            {
                "label": g.number,
                "side": g.side,
                "site": g.site,
                "ectopic": g.ectopic,
                "centre_mm_lps": [c + o for c, o in zip(_voxel_centre(phantom, g), origin, strict=True)],
                "radii_mm": list(g.radii_mm),
                "voxels": int((phantom.labels == g.number).sum()),
            }
            for g in phantom.glands
        ],
    }


def _voxel_centre(phantom: NeckPhantom, gland: Gland) -> tuple[float, float, float]:
    """The gland's centre of mass in mm from voxel (0, 0, 0), as x, y, z (its mask, so the truth on disk)."""
    k, r, c = np.nonzero(phantom.labels == gland.number)
    if k.size == 0:
        return (float("nan"),) * 3
    sz, sy, sx = phantom.spacing_mm
    return (float(c.mean() * sx), float(r.mean() * sy), float(k.mean() * sz))
