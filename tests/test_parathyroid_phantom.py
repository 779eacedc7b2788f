"""Synthetic parathyroid studies (scintnode.phantoms.parathyroid) and the quick ParaNet training command.

The studies must look like what a site's cameras send (headers the rules route, dciodvfy-clean) and carry
truth that matches their pixels: a slow-washout gland stands out on the late image, the thyroid fades."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from scintnode.phantoms import parathyroid
from scintnode.phantoms.cli import main as phantoms_main
from scintnode.route.facts import derive_facts
from scintnode.train.cli import main as train_main
from tests.dicom_validation import assert_dciodvfy_clean


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("parathyroid")
    assert phantoms_main(["parathyroid", "--out", str(folder), "--patients", "14", "--seed", "3"]) == 0
    return folder, json.loads((folder / "ground_truth.json").read_text())


def test_studies_have_the_headers_of_a_dual_phase_mibi_and_a_thyroid_scan(
    written: tuple[Path, dict[str, object]],
) -> None:
    folder, truth = written
    assert truth["synthetic"] is True
    cases = truth["cases"]
    assert isinstance(cases, list) and len(cases) == 14
    assert {c["label"] for c in cases} == {"normal", "abnormal"}
    assert any(c["thyroid_other_day"] for c in cases)
    for case in cases[:6]:
        early, late = (dcmread(folder / case["files"][s]) for s in ("early", "late"))
        assert early.StudyInstanceUID == late.StudyInstanceUID == case["mibi_study_instance_uid"]
        assert early.BodyPartExamined == "NECK"
        for ds, low, high in ((early, 5, 15), (late, 105, 135)):
            facts = derive_facts(ds)
            assert facts.radiopharmaceutical.value == "sestamibi"
            assert low <= float(facts.minutes_after_injection.value) <= high  # type: ignore[arg-type]
        if "thyroid" in case["files"]:
            thyroid = dcmread(folder / case["files"]["thyroid"])
            assert derive_facts(thyroid).radiopharmaceutical.value == "pertechnetate"
            other_study = thyroid.StudyInstanceUID != early.StudyInstanceUID
            assert other_study == case["thyroid_other_day"] and thyroid.PatientID == early.PatientID
    assert_dciodvfy_clean(folder / cases[0]["files"]["early"])


def _around(counts: np.ndarray, point: tuple[float, float]) -> float:
    column, row = int(point[0]), int(point[1])
    return float(counts[row - 2 : row + 3, column - 2 : column + 3].mean())


def _hottest(counts: np.ndarray) -> float:
    return float(np.percentile(counts, 99.5))


def test_slow_glands_stand_out_on_the_late_image_and_the_thyroid_washes_out() -> None:
    rng = np.random.default_rng(7)
    rises: list[float] = []
    for _ in range(40):
        case = parathyroid.synthesize(True, rng)
        for gland in case.glands:
            if gland.washout != "slow":
                continue
            late_peak = _around(case.late, gland.late)
            early_peak = _around(case.early, gland.early)
            # relative to the brightest structures (thyroid, salivary glands), which wash out, the gland rises
            rises.append((late_peak / _hottest(case.late)) / (early_peak / _hottest(case.early)))
    assert len(rises) >= 20
    assert float(np.median(rises)) > 1.3 and float(np.mean(np.array(rises) > 1.0)) > 0.8
    normal = parathyroid.synthesize(False, rng)
    assert normal.label == "normal" and not normal.glands


def test_quick_training_writes_weights_metrics_report_and_card(tmp_path: Path) -> None:
    assert train_main(["parathyroid", "--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "paranet-small.metrics.json").read_text())
    assert metrics["synthetic"] is True and len(metrics["cross_validation"]["folds"]) == 2
    readings = {"gradcam × uptake", "gradcam++ × uptake", "gradcam", "gradcam++", "uptake alone"}
    assert set(metrics["cross_validation"]["glands"]) == readings
    assert metrics["node_cam_method"] in ("gradcam", "gradcam++")
    for name in ("paranet-small.pt", "paranet-small.report.png", "paranet-small.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "synthetic" in (tmp_path / "paranet-small.md").read_text()
