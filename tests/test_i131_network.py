"""The paper 004 network: the two-class head on torchvision's ResNet-18 names, a Finding on the source frame, the
synthetic 131I phantoms and their studies, training through the CLI, and a synthetic sanity check of the weights."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from torch import nn

from scintnode.models import i131_neck as net
from scintnode.models.planar import ImageNotUsable
from scintnode.models.resnet import load_backbone, resnet18
from scintnode.models.weights_file import file_sha256
from scintnode.phantoms import cli as phantoms_cli
from scintnode.phantoms import i131_neck as phantoms
from scintnode.phantoms import nm
from scintnode.route.facts import derive_facts
from scintnode.train import cli as train_cli
from scintnode.train import i131_neck as training
from tests.dicom_validation import assert_dciodvfy_clean


def neck_dataset(counts: np.ndarray, spacing: float, views: tuple[str, ...] = phantoms.VIEWS) -> Dataset:
    start = datetime(2024, 2, 5, 9, 0)
    return nm.build_nm_image(
        counts.astype(np.uint16),
        patient=nm.Patient("SYNI131T", "SYNTHETIC^I131TEST", date(1975, 1, 1), "F"),
        study=nm.StudyInfo(generate_uid(), start, accession="SYNI131T", description="NM I-131 neck (synthetic)"),
        series_uid=generate_uid(),
        series_number=1,
        series_description="I-131 NECK ANT/POST (synthetic)",
        agent="i131-iodide",
        views=views,
        acquired=start + timedelta(minutes=10),
        pixel_spacing_mm=(spacing, spacing),
        collimator=("HEGP", "PARA"),
    )


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "i131.pt"
    net.save_weights(net.ResidualResNet18(), path, {"version": "test", "image_size": 64})
    return path


def test_head_is_two_classes_in_place_of_fc() -> None:
    model = net.ResidualResNet18()
    assert isinstance(model.fc, nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (512, 2)
    assert net.CLASS_KEYS == ("no_residual", "residual") and net.POSITIVE == "residual"
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = {k: tuple(v.shape) for k, v in resnet18().state_dict().items()}
    assert ours.keys() == reference.keys()  # torchvision's names, fc included
    assert {k: s for k, s in ours.items() if not k.startswith("fc.")} == {
        k: s for k, s in reference.items() if not k.startswith("fc.")
    }
    assert ours["fc.weight"] == (2, 512) and reference["fc.weight"] == (1000, 512)


def test_imagenet_and_fine_tuned_torchvision_weights_load() -> None:
    imagenet = resnet18().state_dict()
    model = net.ResidualResNet18()
    load_backbone(model, imagenet)
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    fine_tuned = net.ResidualResNet18().state_dict()  # what torchvision's resnet18(num_classes=2) saves
    model.load_state_dict(fine_tuned)
    assert torch.equal(model.state_dict()["fc.weight"], fine_tuned["fc.weight"])


def test_run_gives_a_two_class_finding_on_the_anterior_frame(random_weights: Path) -> None:
    network = net.load_i131_neck_network(random_weights)
    assert network.spec.name == "i131-neck-resnet18" and network.spec.trained_on_synthetic
    assert network.spec.weights_sha256 == file_sha256(random_weights)
    assert network.spec.label("residual").code.scheme == "99SCINT"
    phantom = phantoms.synthesize("residual", np.random.default_rng(2))
    # posterior stored first: the network must still read the anterior frame
    ds = neck_dataset(phantom.counts[::-1], phantom.pixel_spacing_mm, views=("posterior", "anterior"))
    finding = network.run([ds])
    assert set(finding.probabilities) == {"no_residual", "residual"}
    assert sum(finding.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert finding.predicted == max(finding.probabilities, key=lambda k: finding.probabilities[k])
    assert finding.source_frames == (2,)
    assert finding.heatmaps[0].shape == finding.display_images[0].shape == (256, 256)
    (spot,) = finding.hotspots
    assert (spot.source_index, spot.frame) == (0, 2) and spot.score == pytest.approx(1.0)
    assert sum(len(m._forward_hooks) for m in network.model.modules()) == 0
    with pytest.raises(ImageNotUsable, match="no sources"):
        network.run([])


def test_phantoms_have_the_papers_balance_and_foci_in_the_bed() -> None:
    samples = phantoms.generate(40, seed=3)
    labels = [p.label for p in samples]
    assert labels.count("residual") == round(40 * 346 / 446)
    for p in samples:
        assert p.counts.shape == (2, 256, 256) and p.counts.dtype == np.uint16
        assert (len(p.foci) > 0) == (p.label == "residual")
        for focus in p.foci:
            du = (focus.column - p.bed_centre[0]) * p.pixel_spacing_mm
            dv = (focus.row - p.bed_centre[1]) * p.pixel_spacing_mm
            assert abs(du) <= phantoms.BED_HALF_WIDTH_MM + 0.01
            assert phantoms.BED_TOP_MM - 0.01 <= dv <= phantoms.BED_BOTTOM_MM + 0.01
    with pytest.raises(ValueError, match="unknown class"):
        phantoms.synthesize("graves", np.random.default_rng(0))


def test_written_studies_are_valid_i131_nm_with_ground_truth(tmp_path: Path) -> None:
    assert phantoms_cli.main(["i131-neck", "--out", str(tmp_path), "--count", "3", "--seed", "4"]) == 0
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["synthetic"] is True and truth["classes"] == ["no_residual", "residual"]
    assert len(truth["images"]) == 3
    entry = truth["images"][0]
    assert {"file", "label", "study_instance_uid", "sop_instance_uid", "foci", "bed_centre"} <= entry.keys()
    ds = dcmread(tmp_path / entry["file"])
    assert ds.SOPInstanceUID == entry["sop_instance_uid"] and ds.StudyInstanceUID == entry["study_instance_uid"]
    assert ds.NumberOfFrames == 2 and ds.BodyPartExamined == "NECK"
    assert ds.DetectorInformationSequence[0].CollimatorGridName == "HEGP"
    facts = derive_facts(ds)
    assert (facts.radionuclide.value, facts.radiopharmaceutical.value) == ("i131", "iodide")
    assert facts.energy_window_kev.value == pytest.approx(364.0)
    assert_dciodvfy_clean(tmp_path / entry["file"])
    assert phantoms_cli.main(["i131-neck", "--out", str(tmp_path), "--count", "0"]) == 2


def test_random_groupings_are_stratified_three_to_one() -> None:
    labels = np.array([1] * 31 + [0] * 9)
    splits = training.random_groupings(labels, 10, 0.25, seed=0)
    assert len(splits) == 10
    for train_index, test_index in splits:
        assert sorted(np.concatenate([train_index, test_index]).tolist()) == list(range(40))
        assert np.bincount(labels[test_index]).tolist() == [2, 8]  # 9/4 and 31/4, rounded
    assert not all(np.array_equal(splits[0][1], s[1]) for s in splits[1:])
    with pytest.raises(ValueError, match="at least 2"):
        training.random_groupings(np.array([1, 1, 1, 0]), 2, 0.25, seed=0)


def test_quick_training_through_the_cli(tmp_path: Path) -> None:
    assert train_cli.main(["i131-neck", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "i131-neck-resnet18.metrics.json").read_text())
    assert result["synthetic"] is True and result["positive_class"] == "residual"
    assert len(result["groupings"]["rows"]) == 2
    assert set(result["groupings"]["mean_std"]) == set(training.METRIC_COLUMNS)
    assert result["config"]["learning_rate"] == 1e-3 and result["config"]["weight_decay"] == 1e-5
    card = (tmp_path / "i131-neck-resnet18.md").read_text()
    assert "synthetic phantoms only" in card and "--quick" in card and "No ImageNet weights" in card
    assert training.rewrite_model_card(tmp_path).read_text() == card  # the JSON holds everything the card says
    assert (tmp_path / "i131-neck-resnet18.report.png").stat().st_size > 1000
    payload = torch.load(tmp_path / "i131-neck-resnet18.pt", weights_only=True)
    assert payload["state_dict"]["fc.weight"].dtype == torch.float16
    network = net.load_i131_neck_network(tmp_path / "i131-neck-resnet18.pt")
    assert network.image_size == 32 and network.model.fc.weight.dtype == torch.float32
    assert train_cli.main(["i131-neck", "--quick", "--pretrained", str(tmp_path / "none.pth")]) == 2


def test_paper_defaults_are_the_papers() -> None:
    config = training.TrainConfig()
    assert (config.learning_rate, config.weight_decay, config.epochs, config.image_size) == (1e-5, 1e-5, 80, 224)
    assert (config.groupings, config.test_fraction, config.count) == (10, 0.25, 446)


def test_committed_weights_classify_fresh_synthetic_phantoms_above_chance() -> None:
    """Synthetic sanity check only (not clinical accuracy): 24 balanced phantoms of a seed the weights never saw."""
    network = net.load_i131_neck_network()
    samples = phantoms.generate(24, seed=515151, residual_fraction=0.5)
    right = sum(network.run([neck_dataset(p.counts, p.pixel_spacing_mm)]).predicted == p.label for p in samples)
    assert right / len(samples) >= 0.75


def test_demo_cases_show_both_classes(tmp_path: Path) -> None:
    from scintnode.demo_cases import CASES

    cases = CASES["i131-neck-resnet18"](tmp_path, 1, 5)
    assert sorted(case.truth for case in cases) == ["no_residual", "residual"]
    for case in cases:
        (files,) = case.associations
        assert files[0].exists() and dcmread(files[0]).StudyInstanceUID == case.result_study_uid
