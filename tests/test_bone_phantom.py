"""Synthetic whole-body phantoms (paper 003 classes), their DICOM and ground truth, the routing rules that send
them to Dscint (and only them), and training by the paper's protocol through the CLI (quick setting)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from scintnode.models import dscint as net
from scintnode.models.catalog import network_names
from scintnode.phantoms import bone, nm
from scintnode.phantoms import cli as phantoms_cli
from scintnode.route import load_rule_set
from scintnode.train import bone as training
from scintnode.train import cli as train_cli
from tests.dicom_validation import assert_dciodvfy_clean

RULES = Path(__file__).resolve().parent.parent / "rules"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("bone")
    assert phantoms_cli.main(["bone", "--out", str(folder), "--per-class", "1", "--seed", "4"]) == 0
    return folder, json.loads((folder / "ground_truth.json").read_text())


def fired(header: Dataset) -> list[str]:
    rule_set = load_rule_set(RULES, networks=network_names())
    return sorted(d.rule.name for d in rule_set.evaluate(header) if d.fires)


def test_ground_truth_describes_every_study(studies: tuple[Path, dict[str, object]]) -> None:
    folder, truth = studies
    assert truth["synthetic"] is True and truth["classes"] == list(bone.CLASSES)
    entries = truth["images"]
    assert isinstance(entries, list) and sorted(e["label"] for e in entries) == sorted(bone.CLASSES)
    for entry in entries:
        ds = dcmread(folder / entry["file"])
        assert ds.StudyInstanceUID == entry["study_instance_uid"] and ds.SOPInstanceUID == entry["sop_instance_uid"]
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
        assert (ds.NumberOfFrames, ds.Rows, ds.Columns) == (2, 1024, 256)
        views = [item.ViewCodeSequence[0].CodeValue for item in ds.DetectorInformationSequence]
        assert views == ["399321004", "399001007"]  # anterior, posterior
        nuclide = ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeValue
        assert nuclide == ("1368003" if entry["label"] == "thyroid_carcinoma" else "72454006")
        for lesion in entry["lesions"]:
            for view in ("anterior", "posterior"):
                column, row = lesion[view]
                assert 0 < column < ds.Columns and 0 < row < ds.Rows


def test_phantom_objects_pass_dciodvfy(studies: tuple[Path, dict[str, object]]) -> None:
    folder, truth = studies
    for entry in truth["images"]:  # type: ignore[attr-defined]
        if entry["label"] in ("metastasis", "thyroid_carcinoma"):  # one Tc-99m MDP, one I-131
            assert_dciodvfy_clean(folder / entry["file"])


def test_classes_look_like_their_scans() -> None:
    rng = np.random.default_rng(8)
    metastasis = bone.synthesize("metastasis", rng)
    iodine = bone.synthesize("thyroid_carcinoma", rng)
    assert iodine.agent == "i131-iodide" and metastasis.agent == "medronate"
    assert iodine.anterior.sum() < metastasis.anterior.sum() / 3  # few counts, no skeleton
    axial = {"spine", "rib", "pelvis", "skull", "sternum"}
    with_metastases = bone.generate(6, seed=3)[1::4]  # classes are interleaved; index 1 is metastasis
    sites = [lesion.site for p in with_metastases for lesion in p.lesions if lesion.kind == "metastasis"]
    assert sum(site in axial for site in sites) > 0.6 * len(sites)
    for lesion in metastasis.lesions:
        if lesion.kind == "metastasis":
            column, row = (int(v) for v in lesion.posterior)
            assert lesion.anterior[1] == lesion.posterior[1]  # same height in both views
            assert metastasis.posterior[row - 2 : row + 3, column - 2 : column + 3].mean() > np.median(
                metastasis.posterior[metastasis.posterior > 0]
            )


def test_bone_uptake_falls_with_age() -> None:
    def contrast(age: int) -> float:
        rng = np.random.default_rng(21)
        ratios = []
        for _ in range(4):
            view = bone.synthesize("normal", rng, age=age).posterior.astype(np.float64)
            body = view[view > 0]
            ratios.append(np.percentile(body, 95) / np.percentile(body, 40))
        return float(np.mean(ratios))

    assert contrast(30) > contrast(85)


def _static_thyroid() -> Dataset:
    start = datetime(2024, 3, 1, 9, 0)
    return nm.build_nm_image(
        np.zeros((1, 64, 64), dtype=np.uint16),
        patient=nm.Patient("SYNT1", "SYNTHETIC^T", None, "F"),
        study=nm.StudyInfo(generate_uid(), start, "SYNT1", "NM thyroid (synthetic)"),
        series_uid=generate_uid(),
        series_number=1,
        series_description="THYROID ANT",
        agent="pertechnetate",
        acquired=start + timedelta(minutes=20),
        injected=start,
    )


def test_rules_send_whole_body_scans_to_dscint_and_nothing_else(studies: tuple[Path, dict[str, object]]) -> None:
    folder, truth = studies
    for entry in truth["images"]:  # type: ignore[attr-defined]
        header = dcmread(folder / entry["file"], stop_before_pixels=True)
        assert fired(header) == ["whole-body-anterior-posterior"], entry["label"]
        single = header.copy()
        single.NumberOfFrames = 1
        single.DetectorInformationSequence = header.DetectorInformationSequence[1:]
        assert fired(single) == ["whole-body-single-views"], entry["label"]
        mibg = copy.deepcopy(header)
        mibg.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0].CodeValue = "395789007"
        if entry["label"] == "thyroid_carcinoma":
            assert fired(mibg) == []  # I-131 MIBG is not a thyroid carcinoma scan
    assert fired(_static_thyroid()) == ["thyroid-pertechnetate-planar"]
    static_i131 = _static_thyroid()
    static_i131.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeValue = "1368003"
    static_i131.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0].CodeValue = "111160004"
    assert not [name for name in fired(static_i131) if name.startswith("whole-body")]


def test_patient_split_keeps_a_patients_images_together() -> None:
    labels = np.repeat(np.arange(4), 20)
    patients = np.repeat(np.arange(40), 2)
    train, test = training.patient_split(labels, patients, 0.3, seed=1)
    assert sorted([*train, *test]) == list(range(80))
    assert not set(patients[train]) & set(patients[test])
    assert np.bincount(labels[test], minlength=4).tolist() == [6, 6, 6, 6]  # 3 of 10 patients per class, 2 views


def test_augmentation_mirrors_shifts_and_rotates() -> None:
    image = np.zeros((64, 32), dtype=np.float16)
    image[10:20, 4:8] = 1.0
    still = training.augment(image, np.random.default_rng(0), training.TrainConfig(max_shift_px=0, max_rotation_deg=0))
    assert np.array_equal(still, image) or np.array_equal(still, image[:, ::-1])
    moved = training.augment(image, np.random.default_rng(0), training.TrainConfig())
    assert moved.shape == image.shape and not np.array_equal(moved, still)


def test_quick_training_through_the_cli(tmp_path: Path) -> None:
    assert train_cli.main(["bone", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "dscint.metrics.json").read_text())
    assert result["synthetic"] is True and len(result["runs"]) == 2
    assert set(result["mean_std"]) >= {"accuracy", "precision", "recall", "specificity", "f1", "auc"}
    assert set(result["per_class_mean"]) == set(net.CLASS_KEYS)
    card = (tmp_path / "dscint.md").read_text()
    assert "synthetic phantoms only" in card and "--quick" in card and "Deviations from the paper" in card
    assert (tmp_path / "dscint.report.png").stat().st_size > 1000
    payload = torch.load(tmp_path / "dscint.pt", weights_only=True)
    assert payload["state_dict"]["conv1.weight"].dtype == torch.float16
    network = net.load_dscint_network(tmp_path / "dscint.pt")
    assert network.model.input_shape == (256, 64) and network.model.conv1.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="not a scintnode dscint weights file"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        net.load_weights(tmp_path / "bad.pt")
