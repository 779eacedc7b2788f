"""Synthetic whole-body scintigrams of the four classes of paper 003 (Dscint), anterior and posterior, with truth.

Feeds training (numpy arrays) and the demo and tests (2-frame WHOLE BODY NM objects through nm.py). Synthetic,
never a patient: a stick-and-ellipse skeleton drawn in millimetres, camera blur and Poisson counts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydicom.uid import generate_uid

from scintnode.phantoms import nm

CLASSES: tuple[str, ...] = ("normal", "metastasis", "arthritis", "thyroid_carcinoma")
ROWS, COLUMNS = 1024, 256  # paper 003: 256 x 1024 matrices of 2.26 mm pixels (GE Millennium MPR)
PIXEL_MM = 2.26
ViewName = Literal["anterior", "posterior"]

# How strongly each view sees a structure (depth in the body): anterior weight, posterior weight.
_FRONT, _BACK, _BOTH = (1.0, 0.45), (0.5, 1.0), (0.9, 0.9)
# Joints where arthritis (and, mildly, age) raises uptake: (x mm, patient's left positive; y mm from the vertex).
_JOINTS: dict[str, tuple[float, float]] = {
    "shoulder": (175.0, 300.0),
    "elbow": (200.0, 590.0),
    "wrist": (208.0, 830.0),
    "hand": (212.0, 900.0),
    "hip": (95.0, 880.0),
    "knee": (92.0, 1310.0),
    "ankle": (86.0, 1690.0),
    "foot": (92.0, 1745.0),
    "sacroiliac": (32.0, 790.0),
}
# Where metastases go: mostly the axial skeleton (spine, ribs, pelvis, skull), then proximal long bones.
_METASTASIS_SITES: tuple[tuple[str, float], ...] = (
    ("spine", 0.34),
    ("rib", 0.22),
    ("pelvis", 0.2),
    ("skull", 0.08),
    ("femur", 0.08),
    ("humerus", 0.04),
    ("sternum", 0.04),
)


@dataclass(frozen=True)
class Lesion:
    """A hot focus in the truth: kind, anatomy site, and centre in mm (x to the patient's left, y from vertex)."""

    kind: Literal["metastasis", "arthritis", "thyroid_remnant", "extravasation", "urine", "degenerative"]
    site: str
    x_mm: float
    y_mm: float
    radius_mm: float
    ratio: float  # uptake over the surrounding bone (or soft tissue)
    anterior: tuple[float, float] = (0.0, 0.0)  # (column, row) DICOM image coordinates in each view
    posterior: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class BonePhantom:
    """One synthetic whole-body study: both views as uint16 counts (rows, columns), upright, head at the top."""

    anterior: np.ndarray
    posterior: np.ndarray
    label: str
    age: int
    agent: str  # nm.py agent key
    lesions: tuple[Lesion, ...]
    missing_view: ViewName | None = None  # the study "lost" this view (paper 003 §2.1); the array is still drawn


@dataclass
class _Canvas:
    """Drawing surface in anatomy millimetres for one view; the posterior view mirrors left and right."""

    view: ViewName
    origin_column: float  # pixel column of the body's midline
    origin_row: float  # pixel row of the vertex
    scale: float  # body size relative to a 175 cm adult
    image: np.ndarray = field(default_factory=lambda: np.zeros((ROWS, COLUMNS), dtype=np.float32))

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        sign = 1.0 if self.view == "anterior" else -1.0
        return self.origin_column + sign * x * self.scale / PIXEL_MM, self.origin_row + y * self.scale / PIXEL_MM

    def weight(self, depth: tuple[float, float]) -> float:
        return depth[0] if self.view == "anterior" else depth[1]

    def stroke(
        self, points: list[tuple[float, float]], width_mm: float, value: float, depth: tuple[float, float]
    ) -> None:
        pts = np.array([self.pixel(x, y) for x, y in points], dtype=np.float64)
        thickness = max(1, round(width_mm * self.scale / PIXEL_MM))
        cv2.polylines(self.image, [np.round(pts).astype(np.int32)], False, float(value * self.weight(depth)), thickness)

    def blob(self, x: float, y: float, rx: float, ry: float, value: float, depth: tuple[float, float]) -> None:
        """Adds a filled ellipse (value is added, so foci stack on bone)."""
        column, row = self.pixel(x, y)
        axes = (max(1, round(rx * self.scale / PIXEL_MM)), max(1, round(ry * self.scale / PIXEL_MM)))
        layer = np.zeros_like(self.image)
        cv2.ellipse(layer, (round(column), round(row)), axes, 0.0, 0.0, 360.0, float(value * self.weight(depth)), -1)
        self.image += layer

    def fill(self, x: float, y: float, rx: float, ry: float, value: float, depth: tuple[float, float]) -> None:
        """Draws a filled ellipse over what is there (bones, body outline)."""
        column, row = self.pixel(x, y)
        axes = (max(1, round(rx * self.scale / PIXEL_MM)), max(1, round(ry * self.scale / PIXEL_MM)))
        cv2.ellipse(
            self.image, (round(column), round(row)), axes, 0.0, 0.0, 360.0, float(value * self.weight(depth)), -1
        )


def _skeleton(canvas: _Canvas, arm: float) -> None:
    """The 99mTc-MDP skeleton, bone uptake about 1; `arm` (mm) spreads the arms away from the body."""
    canvas.fill(0, 100, 72, 95, 0.85, _BOTH)  # calvarium
    canvas.fill(0, 95, 60, 80, 0.45, _BOTH)  # brain behind it takes little
    canvas.stroke([(-45, 175), (0, 215), (45, 175)], 14, 0.8, _FRONT)  # mandible
    canvas.fill(0, 160, 32, 18, 0.6, _FRONT)  # maxilla and nose
    for top, bottom, width in ((205, 300, 16), (300, 560, 24), (560, 740, 32)):  # cervical, thoracic, lumbar
        count = max(1, round((bottom - top) / 24))
        for k in range(count):
            y0 = top + k * (bottom - top) / count
            canvas.stroke([(0, y0 + 2), (0, y0 + (bottom - top) / count - 3)], width, 1.0, _BACK)
    canvas.stroke([(-28, 745), (0, 835), (28, 745), (-28, 745)], 22, 0.95, _BACK)  # sacrum
    for side in (-1.0, 1.0):
        canvas.stroke([(side * 12, 288), (side * 80, 280), (side * 150, 272)], 10, 0.8, _FRONT)  # clavicle
        canvas.stroke([(side * 60, 300), (side * 130, 305), (side * 95, 440), (side * 60, 300)], 12, 0.5, _BACK)
        for rib in range(10):
            y = 305 + rib * 25
            reach = 95 + 40 * np.sin(np.pi * (rib + 1) / 12)
            t = np.linspace(0.0, np.pi * 0.95, 9)
            points = [(side * (12 + reach * np.sin(a)), y + 30 * (1 - np.cos(a)) + 8 * a) for a in t]
            canvas.stroke(points, 7, 0.55, _BACK)
        canvas.stroke([(side * 40, 760), (side * 120, 745), (side * 125, 800), (side * 95, 870)], 16, 0.9, _BOTH)
        canvas.stroke([(side * 30, 800), (side * 34, 770)], 10, 1.05, _BACK)  # sacroiliac joint
        canvas.stroke([(side * 15, 900), (side * 55, 905), (side * 90, 880)], 12, 0.8, _FRONT)  # pubis
        canvas.fill(side * 95, 880, 22, 22, 0.9, _BOTH)  # hip joint and femoral head
        shoulder, elbow = (side * 175, 300), (side * (190 + arm), 590)
        wrist = (side * (200 + 1.6 * arm), 830)
        canvas.fill(*shoulder, 24, 22, 0.9, _BOTH)
        canvas.stroke([shoulder, elbow], 14, 0.75, _BOTH)  # humerus
        canvas.stroke([elbow, wrist], 11, 0.6, _BOTH)  # radius and ulna
        canvas.fill(wrist[0], wrist[1] + 60, 18, 42, 0.5, _BOTH)  # hand
        knee, ankle = (side * 92, 1310), (side * 86, 1690)
        canvas.stroke([(side * 100, 890), knee], 20, 0.8, _BOTH)  # femur
        canvas.stroke([knee, ankle], 16, 0.75, _BOTH)  # tibia
        canvas.fill(*knee, 26, 22, 0.95, _FRONT)  # knee, patella in front
        canvas.fill(side * 92, 1745, 20, 40, 0.75, _BOTH)  # foot
    canvas.stroke([(0, 300), (0, 470)], 16, 0.6, _FRONT)  # sternum


def _soft_tissue(canvas: _Canvas, level: float, arm: float) -> None:
    """Body outline at `level` (blood pool and soft tissue), drawn under the bones."""
    canvas.fill(0, 100, 82, 105, level, _BOTH)
    canvas.stroke([(0, 190), (0, 270)], 110, level, _BOTH)
    canvas.fill(0, 560, 165, 300, level, _BOTH)
    for side in (-1.0, 1.0):
        canvas.stroke([(side * 178, 300), (side * (192 + arm), 590), (side * (203 + 1.6 * arm), 900)], 70, level, _BOTH)
        canvas.stroke([(side * 95, 850), (side * 92, 1310), (side * 88, 1760)], 150, level, _BOTH)


def _points(canvas_anterior: _Canvas, canvas_posterior: _Canvas, lesion: Lesion) -> Lesion:
    """The lesion with its centre in DICOM image coordinates (pixel centres at +0.5) of both views."""
    a = canvas_anterior.pixel(lesion.x_mm, lesion.y_mm)
    p = canvas_posterior.pixel(lesion.x_mm, lesion.y_mm)
    return Lesion(**{**lesion.__dict__, "anterior": (a[0] + 0.5, a[1] + 0.5), "posterior": (p[0] + 0.5, p[1] + 0.5)})


def _metastases(rng: np.random.Generator) -> list[Lesion]:
    sites, weights = zip(*_METASTASIS_SITES, strict=True)
    out = []
    for _ in range(int(rng.integers(1, 9))):
        site = str(rng.choice(sites, p=np.array(weights) / sum(weights)))
        side = float(rng.choice((-1.0, 1.0)))
        x, y = {
            "spine": (0.0, rng.uniform(220, 740)),
            "rib": (side * rng.uniform(50, 125), rng.uniform(320, 560)),
            "pelvis": (side * rng.uniform(30, 120), rng.uniform(750, 880)),
            "skull": (side * rng.uniform(0, 55), rng.uniform(30, 140)),
            "femur": (side * rng.uniform(95, 100), rng.uniform(900, 1100)),
            "humerus": (side * rng.uniform(176, 185), rng.uniform(310, 450)),
            "sternum": (0.0, rng.uniform(310, 460)),
        }[site]
        out.append(
            Lesion("metastasis", site, float(x), float(y), float(rng.uniform(7, 16)), float(rng.uniform(2.0, 5.0)))
        )
    return out


def _arthritis(rng: np.random.Generator) -> list[Lesion]:
    """Polyarticular (often symmetric, small joints) or a few large weight-bearing joints."""
    names = list(_JOINTS)
    if rng.random() < 0.5:
        chosen = [
            str(n)
            for n in rng.choice(
                ["wrist", "hand", "foot", "ankle", "knee", "shoulder", "elbow"],
                size=int(rng.integers(2, 5)),
                replace=False,
            )
        ]
        sides: list[tuple[float, ...]] = [(-1.0, 1.0)] * len(chosen)
    else:
        chosen = [str(n) for n in rng.choice(names, size=int(rng.integers(1, 4)), replace=False)]
        sides = [(float(rng.choice((-1.0, 1.0))),) if rng.random() < 0.6 else (-1.0, 1.0) for _ in chosen]
    out = []
    for name, both in zip(chosen, sides, strict=True):
        x, y = _JOINTS[name]
        for side in both:
            out.append(Lesion("arthritis", name, side * x, y, float(rng.uniform(14, 26)), float(rng.uniform(1.6, 3.2))))
    return out


def _degenerative(rng: np.random.Generator, age: int) -> list[Lesion]:
    """Mild age-related uptake (knees, spine) in any Tc-99m class: why the paper's older patients confuse it."""
    out = []
    for _ in range(int(rng.poisson(max(0.0, (age - 45) / 20.0)))):
        if rng.random() < 0.5:
            site, x, y = "spine", 0.0, float(rng.uniform(560, 740))
        else:
            site, x, y = "knee", float(rng.choice((-1.0, 1.0))) * 92.0, 1310.0
        out.append(Lesion("degenerative", site, x, y, float(rng.uniform(10, 18)), float(rng.uniform(1.1, 1.5))))
    return out


def _distractors(rng: np.random.Generator, arm: float) -> list[Lesion]:
    """Injection-site extravasation (arm or hand) and urine contamination (groin, thigh): hot, not bone."""
    out = []
    if rng.random() < 0.3:
        side = float(rng.choice((-1.0, 1.0)))
        y = float(rng.choice((590.0, 860.0)))
        x = side * (192 + arm if y < 700 else 208 + 1.6 * arm)
        out.append(Lesion("extravasation", "arm", x, y, float(rng.uniform(8, 15)), float(rng.uniform(2.0, 8.0))))
    if rng.random() < 0.2:
        x, y = float(rng.uniform(-60, 60)), float(rng.uniform(930, 1150))
        out.append(Lesion("urine", "groin", x, y, float(rng.uniform(5, 14)), float(rng.uniform(2.0, 10.0))))
    return out


def _bone_scan(label: str, rng: np.random.Generator, age: int, canvases: list[_Canvas]) -> list[Lesion]:
    arm = float(rng.uniform(-5, 25))
    # Bone uptake relative to soft tissue falls with age (paper 003 §3.2.3, its reference 18).
    soft = float(rng.uniform(0.06, 0.1) * (1.0 + 0.012 * (age - 28)))
    kidneys = float(rng.uniform(0.3, 1.0) * (1.0 + 0.01 * (age - 28)))
    bladder = float(rng.uniform(2.0, 8.0))
    bladder_size = (float(rng.uniform(30, 55)), float(rng.uniform(22, 40)))
    lesions = _degenerative(rng, age) + _distractors(rng, arm)
    if label == "metastasis":
        lesions += _metastases(rng)
    elif label == "arthritis":
        lesions += _arthritis(rng)
    for canvas in canvases:
        _soft_tissue(canvas, soft, arm)
        _skeleton(canvas, arm)
        for side in (-1.0, 1.0):
            canvas.blob(side * 62, 610, 28, 52, kidneys, (0.3, 1.0))
        canvas.blob(0, 880, *bladder_size, bladder, (1.0, 0.6))
        for lesion in lesions:
            bone_like = lesion.kind in ("metastasis", "arthritis", "degenerative")
            depth = _BACK if lesion.site in ("spine", "rib", "sacroiliac") else _BOTH
            value = (lesion.ratio - 1.0) if bone_like else lesion.ratio
            canvas.blob(
                lesion.x_mm,
                lesion.y_mm,
                lesion.radius_mm,
                lesion.radius_mm * 0.85,
                value,
                depth if bone_like else _BOTH,
            )
    return lesions


def _iodine_scan(rng: np.random.Generator, canvases: list[_Canvas]) -> list[Lesion]:
    """I-131 whole-body scan after thyroidectomy: thyroid-bed remnant, salivary glands, stomach, gut, bladder."""
    remnants = [
        Lesion(
            "thyroid_remnant",
            "neck",
            float(rng.uniform(-18, 18)),
            float(rng.uniform(255, 285)),
            float(rng.uniform(6, 14)),
            float(rng.uniform(15, 60)),
        )
        for _ in range(int(rng.integers(1, 4)))
    ]
    lungs = rng.random() < 0.15
    liver = float(rng.uniform(0.0, 0.6))
    for canvas in canvases:
        _soft_tissue(canvas, float(rng.uniform(0.05, 0.12)), float(rng.uniform(-5, 25)))
        for side in (-1.0, 1.0):
            canvas.blob(side * 50, 185, 16, 22, float(rng.uniform(0.5, 2.0)), _BOTH)  # parotid
            canvas.blob(side * 35, 220, 12, 10, float(rng.uniform(0.3, 1.2)), _FRONT)  # submandibular
            if lungs:
                canvas.blob(side * 80, 420, 60, 120, float(rng.uniform(0.4, 1.2)), _BOTH)
        canvas.blob(0, 150, 25, 12, float(rng.uniform(0.3, 1.5)), _FRONT)  # nose and mouth
        canvas.blob(45, 560, 45, 35, float(rng.uniform(0.5, 3.0)), _FRONT)  # stomach
        canvas.blob(-60, 560, 80, 60, liver, _BOTH)
        canvas.blob(0, 720, 110, 70, float(rng.uniform(0.1, 0.6)), _FRONT)  # colon
        canvas.blob(
            0, 880, float(rng.uniform(30, 55)), float(rng.uniform(22, 40)), float(rng.uniform(3, 10)), (1.0, 0.6)
        )
        for lesion in remnants:
            canvas.blob(lesion.x_mm, lesion.y_mm, lesion.radius_mm, lesion.radius_mm, lesion.ratio, _FRONT)
    return remnants


def synthesize(label: str, rng: np.random.Generator, age: int | None = None) -> BonePhantom:
    """One phantom of class `label`; body size, position, tilt, uptake and counts vary with `rng`."""
    if label not in CLASSES:
        raise ValueError(f"unknown whole-body class {label!r}; known: {', '.join(CLASSES)}")
    years = int(age if age is not None else rng.integers(28, 88))  # the ages of paper 003's patients
    scale = float(rng.uniform(0.86, 1.08))
    origin_column = (COLUMNS - 1) / 2.0 + float(rng.uniform(-8, 8))
    origin_row = float(rng.uniform(20, 1024 - 1790 * scale / PIXEL_MM - 10))
    canvases = [_Canvas(view, origin_column, origin_row, scale) for view in ("anterior", "posterior")]
    if label == "thyroid_carcinoma":
        lesions = _iodine_scan(rng, canvases)
        agent, counts_per_unit, fwhm_mm = "i131-iodide", float(rng.uniform(8, 25)), float(rng.uniform(14, 20))
    else:
        lesions = _bone_scan(label, rng, years, canvases)
        agent, counts_per_unit, fwhm_mm = "medronate", float(rng.uniform(40, 90)), float(rng.uniform(9, 13))
    tilt = float(rng.uniform(-2.0, 2.0))  # patients lie slightly askew on the long table
    views = []
    for canvas in canvases:
        sigma = fwhm_mm / 2.3548 / PIXEL_MM
        activity = cv2.GaussianBlur(canvas.image, (0, 0), sigmaX=sigma, sigmaY=sigma)
        turn = cv2.getRotationMatrix2D((origin_column, ROWS / 2.0), tilt if canvas.view == "anterior" else -tilt, 1.0)
        activity = cv2.warpAffine(activity, turn, (COLUMNS, ROWS), flags=cv2.INTER_LINEAR)
        expected = np.clip(activity, 0.0, None) * counts_per_unit
        views.append(np.minimum(rng.poisson(expected), np.iinfo(np.uint16).max).astype(np.uint16))
    placed = tuple(_points(canvases[0], canvases[1], lesion) for lesion in lesions)
    missing: ViewName | None = None
    if rng.random() < 0.1:  # paper 003: 1078 images from 600 patients, so some studies lack a view
        missing = "anterior" if rng.random() < 0.5 else "posterior"
    return BonePhantom(views[0], views[1], label, years, agent, placed, missing)


def generate(per_class: int, seed: int) -> list[BonePhantom]:
    """`per_class` phantoms of each class, interleaved (normal, metastasis, arthritis, thyroid carcinoma, ...)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    return [synthesize(label, rng) for _ in range(per_class) for label in CLASSES]


def write_studies(out_dir: Path, per_class: int, seed: int) -> Path:
    """Write each phantom as its own synthetic study (one 2-frame WHOLE BODY NM object, anterior then posterior)
    and return the ground-truth JSON's path; lesion points are DICOM image coordinates of each frame."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phantoms = generate(per_class, seed)
    rng = np.random.default_rng(seed + 1)
    first_day = datetime(2024, 2, 5, 8, 0)
    entries: list[dict[str, object]] = []
    for index, phantom in enumerate(phantoms, start=1):
        ident = f"SYNWB{seed % 1000:03d}{index:04d}"
        start = first_day + timedelta(days=index // 5, minutes=50 * (index % 5))
        iodine = phantom.agent == "i131-iodide"
        acquired = start + (
            timedelta(hours=int(rng.integers(24, 49))) if iodine else timedelta(minutes=int(rng.integers(120, 300)))
        )
        patient = nm.Patient(
            patient_id=ident,
            name=f"SYNTHETIC^WHOLEBODY^{index:04d}",
            birth_date=date(acquired.year - phantom.age, int(rng.integers(1, 13)), int(rng.integers(1, 29))),
            sex="F" if rng.random() < 0.5 else "M",
        )
        description = "NM I-131 whole body scan (synthetic)" if iodine else "NM bone scan whole body (synthetic)"
        # An I-131 scan is its own study on the imaging day, a day or two after the oral dose.
        study_start = acquired - timedelta(minutes=15) if iodine else start
        study = nm.StudyInfo(study_uid=generate_uid(), start=study_start, accession=ident, description=description)
        ds = nm.build_nm_image(
            np.stack([phantom.anterior, phantom.posterior]),
            patient=patient,
            study=study,
            series_uid=generate_uid(),
            series_number=1,
            series_description=("WB I-131 ANT/POST" if iodine else "WB BONE ANT/POST") + " (synthetic)",
            agent=phantom.agent,
            image_type="WHOLE BODY",
            views=("anterior", "posterior"),
            acquired=acquired,
            injected=start,
            dose_mbq=float(round(rng.uniform(74, 185) if iodine else rng.uniform(740, 925))),
            pixel_spacing_mm=(PIXEL_MM, PIXEL_MM),
            body_part="WHOLEBODY",
            scan_velocity_mm_s=float(rng.uniform(2.6, 3.9)),
            collimator=("HEGP", "PARA") if iodine else ("LEHR", "PARA"),
        )
        name = f"{ident}.dcm"
        nm.save(ds, out / name)
        entries.append(
            {
                "file": name,
                "label": phantom.label,
                "age": phantom.age,
                "agent": phantom.agent,
                "views": ["anterior", "posterior"],
                "lesions": [lesion.__dict__ for lesion in phantom.lesions],
                "study_instance_uid": study.study_uid,
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "patient_id": ident,
            }
        )
    truth = out / "ground_truth.json"
    payload = {
        "synthetic": True,
        "generator": "scintnode.phantoms.bone",
        "seed": seed,
        "per_class": per_class,
        "classes": list(CLASSES),
        "coordinates": (
            "lesion anterior/posterior: DICOM image coordinates of frame 1/2; (0.5, 0.5) is the top-left pixel's centre"
        ),
        "images": entries,
    }
    truth.write_text(json.dumps(payload, indent=2) + "\n")
    return truth
