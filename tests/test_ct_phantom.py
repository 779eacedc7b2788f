"""Synthetic dual-phase neck CT (scintnode/phantoms/ct_parathyroid.py): anatomy, truth files, DICOM, routing facts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from scintnode.phantoms import ct_parathyroid
from scintnode.phantoms.cli import main as phantoms_cli
from scintnode.route.facts import derive_facts
from tests.dicom_validation import assert_dciodvfy_clean


def test_glands_are_small_behind_the_thyroid_and_enhance_more_than_lymph_nodes() -> None:
    phantoms = ct_parathyroid.generate(6, seed=5)
    sites = set()
    for phantom in phantoms:
        assert 2 <= len(phantom.glands) <= 4
        for gland in phantom.glands:
            mask = phantom.labels == gland.number
            volume_mm3 = float(mask.sum()) * float(np.prod(phantom.spacing_mm))
            assert 20 < volume_mm3 < 400  # a few millimetres across
            rise = float(phantom.enhanced[mask].mean() - phantom.unenhanced[mask].mean())
            assert rise > 60  # glands enhance; the native phase shows them near muscle density
            sites.add(gland.site)
            if not gland.ectopic:
                assert gland.centre_mm[1] > -8  # posterior to the thyroid lobes' centres (y -16)
                assert (gland.centre_mm[0] < 0) == (gland.side == "right")  # LPS: right is -x
        air = phantom.unenhanced < -800
        assert air.any()  # trachea (and outside the neck)
    assert {"superior", "inferior"} <= sites


def test_cli_writes_two_valid_series_with_masks_and_synthetic_truth(tmp_path: Path) -> None:
    assert phantoms_cli(["ct-parathyroid", "--out", str(tmp_path), "--count", "1", "--seed", "3"]) == 0
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["synthetic"] is True
    case = truth["cases"][0]
    assert case["synthetic"] is True and case["glands"]
    labels = np.load(tmp_path / case["labels"])
    assert labels.shape == (len(case["unenhanced"]["files"]), *ct_parathyroid.SHAPE[1:])
    assert set(np.unique(labels)) == {0, *(g["label"] for g in case["glands"])}
    native = dcmread(tmp_path / case["unenhanced"]["files"][0])
    enhanced = dcmread(tmp_path / case["enhanced"]["files"][0])
    assert_dciodvfy_clean(native)
    assert_dciodvfy_clean(enhanced)
    assert native.FrameOfReferenceUID == enhanced.FrameOfReferenceUID == case["frame_of_reference_uid"]
    assert "ContrastBolusAgent" not in native and enhanced.ContrastBolusAgent
    assert "SYNTHETIC" in str(native.PatientName)
    assert derive_facts(native).contrast_phase.value == "unenhanced"
    assert derive_facts(enhanced).contrast_phase.value == "enhanced"


def test_cli_writes_the_geometry_asked_for_around_the_same_neck(tmp_path: Path) -> None:
    args = ["ct-parathyroid", "--out", str(tmp_path), "--count", "1", "--seed", "3"]
    assert phantoms_cli([*args, "--shape", "20", "160", "150", "--spacing", "2.5", "0.8", "0.9"]) == 0
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["spacing_mm"] == [2.5, 0.8, 0.9]
    case = truth["cases"][0]
    assert len(case["unenhanced"]["files"]) == len(case["enhanced"]["files"]) == 20
    native = dcmread(tmp_path / case["unenhanced"]["files"][0])
    assert (native.Rows, native.Columns) == (160, 150) and [float(v) for v in native.PixelSpacing] == [0.8, 0.9]
    labels = np.load(tmp_path / case["labels"])
    for gland in case["glands"]:  # each gland keeps its size in mm whatever the voxels
        volume_mm3 = float((labels == gland["label"]).sum()) * 2.5 * 0.8 * 0.9
        assert volume_mm3 == pytest.approx(4 / 3 * np.pi * np.prod(gland["radii_mm"]), rel=0.35)
    assert phantoms_cli([*args, "--shape", "4", "160", "150"]) == 2
    assert phantoms_cli([*args, "--spacing", "1", "0", "1"]) == 2
