"""Synthetic benchmark sets, written once per run: CT 512x512, NM planar 256x256, whole-body NM 2x1024x256.

Every set is 16-bit, Explicit VR Little Endian, with realistic headers from scintnode's phantom builders."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from scintnode.phantoms import nm
from scintnode.phantoms.ct import build_ct_series

START = dt.datetime(2026, 3, 2, 9, 0)


def _patient(index: int) -> nm.Patient:
    return nm.Patient(f"SYNBENCH{index:04d}", "SYNTHETIC^BENCHMARK", dt.date(1970, 1, 1), "O")


def write_ct(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study = nm.StudyInfo(generate_uid(), START, accession="BENCHCT", description="benchmark (synthetic)")
    volume = np.random.default_rng(1).normal(40, 30, size=(count, 512, 512))
    slices = build_ct_series(
        volume,
        patient=_patient(0),
        study=study,
        series_uid=generate_uid(),
        series_number=1,
        series_description="BENCH CT (synthetic)",
        acquired=START,
        frame_of_reference_uid=generate_uid(),
    )
    return [nm.save(ds, folder / f"ct{i:05d}.dcm") for i, ds in enumerate(slices)]


def write_nm(folder: Path, count: int, whole_body: bool = False) -> list[Path]:
    """`count` NM objects; planar ones are MIBI-like so no rule of the shipped set runs a network on them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    paths = []
    shape = (2, 1024, 256) if whole_body else (1, 256, 256)
    for index in range(count):
        study = nm.StudyInfo(generate_uid(), START, accession=f"BNM{index:05d}", description="benchmark (synthetic)")
        ds = nm.build_nm_image(
            rng.poisson(20, size=shape).astype(np.uint16),
            patient=_patient(index),
            study=study,
            series_uid=generate_uid(),
            series_number=1,
            series_description="BENCH (synthetic)",
            agent="medronate",
            image_type="WHOLE BODY" if whole_body else "STATIC",
            views=("anterior", "posterior") if whole_body else ("anterior",),
            acquired=START + dt.timedelta(hours=3),
            injected=START,
            dose_mbq=600.0,
            pixel_spacing_mm=(2.0, 2.0),
            body_part="WHOLEBODY" if whole_body else "CHEST",
            scan_velocity_mm_s=2.5 if whole_body else None,
        )
        paths.append(nm.save(ds, folder / f"nm{index:05d}.dcm"))
    return paths
