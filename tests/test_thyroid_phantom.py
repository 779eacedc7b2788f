"""Synthetic pertechnetate thyroid phantoms: the four classes differ as paper 002 describes, and the studies
written from them are valid, labelled synthetic NM objects with ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scintnode.phantoms import cli, thyroid
from tests.dicom_validation import assert_dciodvfy_clean


def _disc_mean(counts: np.ndarray, column: float, row: float, radius_px: float) -> float:
    rows, columns = np.indices(counts.shape)
    inside = (columns + 0.5 - column) ** 2 + (rows + 0.5 - row) ** 2 <= radius_px**2
    return float(counts[inside].mean())


def _disc(phantom: thyroid.ThyroidPhantom, radius_mm: float) -> np.ndarray:
    """The counts within radius_mm of the gland's centre."""
    rows, columns = np.indices(phantom.counts.shape)
    column, row = phantom.thyroid_centre
    radius = radius_mm / phantom.pixel_spacing_mm
    return phantom.counts[(columns + 0.5 - column) ** 2 + (rows + 0.5 - row) ** 2 <= radius**2]


def _uptake(phantom: thyroid.ThyroidPhantom) -> tuple[float, float]:
    """Mean counts over the gland region (30 mm around its centre) and that over the image's median."""
    gland = float(_disc(phantom, 30.0).mean())
    return gland, gland / max(float(np.median(phantom.counts)), 1.0)


def _gland_area_mm2(phantom: thyroid.ThyroidPhantom) -> float:
    """Area within 60 mm of the gland's centre brighter than half the gland's peak."""
    region = _disc(phantom, 60.0)
    bright = int((region > 0.5 * np.percentile(_disc(phantom, 35.0), 99)).sum())
    return bright * phantom.pixel_spacing_mm**2


def test_classes_differ_as_the_paper_describes() -> None:
    rng = np.random.default_rng(5)
    per_class = {label: [thyroid.synthesize(label, rng, 128) for _ in range(8)] for label in thyroid.CLASSES}
    counts = {label: np.mean([_uptake(p)[0] for p in items]) for label, items in per_class.items()}
    ratio = {label: np.mean([_uptake(p)[1] for p in items]) for label, items in per_class.items()}
    assert counts["graves"] > counts["normal"] > counts["subacute_thyroiditis"]
    assert ratio["graves"] > 2 * ratio["normal"] > 4 * ratio["subacute_thyroiditis"]
    assert ratio["subacute_thyroiditis"] < 3.0  # the gland barely stands out of the background
    # Graves' glands are enlarged: more of the image is bright
    area = {label: np.mean([_gland_area_mm2(p) for p in per_class[label]]) for label in ("graves", "normal")}
    assert area["graves"] > 1.5 * area["normal"]


def test_tumour_nodules_are_cold_or_hot_where_the_truth_says() -> None:
    rng = np.random.default_rng(11)
    kinds = set()
    for _ in range(16):
        phantom = thyroid.synthesize("tumour", rng)
        nodule = phantom.nodule
        assert nodule is not None
        kinds.add(nodule.kind)
        rows, columns = phantom.counts.shape
        assert 0 < nodule.column < columns and 0 < nodule.row < rows
        at_nodule = _disc_mean(phantom.counts, nodule.column, nodule.row, 3.0 / phantom.pixel_spacing_mm)
        gland_peak = float(np.percentile(_disc(phantom, 35.0), 98))
        if nodule.kind == "hot":
            assert at_nodule > 1.05 * gland_peak
        else:
            assert at_nodule < 0.7 * gland_peak
    assert kinds == {"cold", "hot"}
    assert all(p.nodule is None for p in thyroid.generate(1, 0) if p.label != "tumour")


def test_generation_is_deterministic_and_shaped() -> None:
    images, labels = thyroid.generate_arrays(2, seed=3, matrix=128)
    again, _ = thyroid.generate_arrays(2, seed=3, matrix=128)
    other, _ = thyroid.generate_arrays(2, seed=4, matrix=128)
    assert images.shape == (8, 128, 128) and images.dtype == np.uint16
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert np.array_equal(images, again)
    assert not np.array_equal(images, other)
    assert {p.counts.shape for p in thyroid.generate(6, 1)} <= {(128, 128), (256, 256)}
    with pytest.raises(ValueError, match="unknown thyroid class"):
        thyroid.synthesize("goitre", np.random.default_rng(0))


def test_write_studies_via_cli(tmp_path: Path) -> None:
    assert cli.main(["thyroid", "--out", str(tmp_path), "--per-class", "1", "--seed", "7"]) == 0
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["synthetic"] is True
    assert [entry["label"] for entry in truth["images"]] == list(thyroid.CLASSES)
    assert truth["images"][3]["nodule"]["kind"] in ("cold", "hot")
    study_uids = set()
    for entry in truth["images"]:
        ds = pydicom.dcmread(tmp_path / entry["file"])
        assert ds.Modality == "NM" and ds.NumberOfFrames == 1
        assert list(ds.ImageType)[2] == "STATIC"
        assert "SYNTHETIC" in str(ds.PatientName) and "synthetic" in ds.StudyDescription
        agent = ds.RadiopharmaceuticalInformationSequence[0]
        assert agent.RadiopharmaceuticalCodeSequence[0].CodeValue == "19495007"
        assert ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeValue == "399321004"
        assert ds.pixel_array.shape[0] == ds.Rows
        study_uids.add(ds.StudyInstanceUID)
    assert len(study_uids) == 4
    assert_dciodvfy_clean(tmp_path / truth["images"][0]["file"])
