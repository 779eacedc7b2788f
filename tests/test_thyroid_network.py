"""The paper 002 thyroid network: head as described, preprocessing from NM datasets, a Finding whose
heatmap lies on the source frame, training through the CLI, and (synthetic) sanity of the committed weights."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import Dataset
from pydicom.uid import generate_uid
from torch import nn

from scintnode.models import thyroid as net
from scintnode.models.resnet import resnet34
from scintnode.phantoms import nm
from scintnode.phantoms import thyroid as phantoms
from scintnode.train import cli as train_cli
from scintnode.train import thyroid as training


def nm_dataset(frames: np.ndarray, views: tuple[str, ...] = ("anterior",), spacing: float = 1.8) -> Dataset:
    start = datetime(2024, 5, 6, 9, 0)
    return nm.build_nm_image(
        frames.astype(np.uint16),
        patient=nm.Patient("SYNTEST01", "SYNTHETIC^TEST", date(1980, 1, 1), "F"),
        study=nm.StudyInfo(generate_uid(), start, accession="SYNTEST01", description="NM thyroid (synthetic)"),
        series_uid=generate_uid(),
        series_number=1,
        series_description="THYROID (synthetic)",
        agent="pertechnetate",
        views=views,
        acquired=start + timedelta(minutes=20),
        injected=start,
        pixel_spacing_mm=(spacing, spacing),
    )


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network in the committed file format: enough to check shapes and plumbing."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "thyroid.pt"
    net.save_weights(net.ThyroidResNet34(), path, {"version": "test", "image_size": 64, "hidden": list(net.HIDDEN)})
    return path


def test_head_is_the_papers() -> None:
    model = net.ThyroidResNet34()
    head = model.fc
    assert isinstance(head, nn.Sequential)
    assert [type(layer) for layer in head] == [nn.Linear, nn.LeakyReLU, nn.Dropout, nn.Linear, nn.LeakyReLU, nn.Linear]
    assert head[0].in_features == 512
    assert head[2].p == 0.8
    assert head[5].out_features == 4
    assert net.CLASS_KEYS == ("graves", "normal", "subacute_thyroiditis", "tumour")


def test_backbone_keeps_torchvision_names() -> None:
    model = net.ThyroidResNet34()
    backbone = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}
    reference = {k: tuple(v.shape) for k, v in resnet34().state_dict().items() if not k.startswith("fc.")}
    assert backbone == reference


def test_output_is_four_probabilities() -> None:
    model = net.ThyroidResNet34().eval()
    x = net.to_network_input(np.random.default_rng(0).random((3, 64, 64), dtype=np.float32))
    assert x.shape == (3, 3, 64, 64)
    with torch.no_grad():
        probs = net.probabilities(model(x))
    assert probs.shape == (3, 4)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))


def test_prepare_frame_pads_crops_and_maps_back() -> None:
    frame = np.zeros((60, 100), dtype=np.float32)
    frame[30, 80] = 50.0
    prepared = net.prepare_frame(frame, (2.0, 2.0), 32)
    assert prepared.network_input.shape == (32, 32)
    assert prepared.display.shape == (60, 100)
    assert (prepared.box.size, prepared.box.top, prepared.box.left) == (100, -20, 0)
    # A 512 mm field is cropped to 260 mm around the counts.
    wide = np.zeros((256, 256), dtype=np.float32)
    wide[150:170, 40:60] = 100.0
    box = net.prepare_frame(wide, (2.0, 2.0), 32).box
    assert box.size == 130
    assert box.top <= 150 and box.top + box.size >= 170 and box.left <= 40
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[3, 0] = 1.0
    heatmap = net.map_to_frame(cam, box)
    assert heatmap.shape == (256, 256) and heatmap.max() == pytest.approx(1.0)
    with pytest.raises(net.ImageNotUsable, match="2-D frame"):
        net.prepare_frame(np.zeros((4, 4, 4)), None, 32)


def test_read_frame_picks_the_anterior_view() -> None:
    frames = np.stack([np.full((32, 32), 5), np.full((32, 32), 9)])
    source = net.read_frame(nm_dataset(frames, views=("posterior", "anterior")))
    assert source.frame_number == 2
    assert float(source.pixels.mean()) == 9.0
    assert source.pixel_spacing_mm == (1.8, 1.8)
    ds = nm_dataset(frames[:1])
    del ds.PixelData
    with pytest.raises(net.ImageNotUsable, match="no pixel data"):
        net.read_frame(ds)


def test_run_gives_a_finding_on_the_source_grid(random_weights: Path) -> None:
    network = net.load_thyroid_network(random_weights)
    assert network.spec.weights_sha256 == net.file_sha256(random_weights)
    assert network.spec.trained_on_synthetic and network.spec.name == "thyroid-resnet34"
    assert not network.model.training
    phantom = phantoms.synthesize("tumour", np.random.default_rng(3), matrix=128)
    ds = nm_dataset(np.stack([np.zeros_like(phantom.counts), phantom.counts]), views=("posterior", "anterior"))
    finding = network.run([ds])
    assert set(finding.probabilities) == set(net.CLASS_KEYS)
    assert sum(finding.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert finding.predicted == max(finding.probabilities, key=lambda k: finding.probabilities[k])
    assert finding.source_frames == (2,)
    assert finding.heatmaps[0].shape == finding.display_images[0].shape == (128, 128)
    assert (
        finding.heatmaps[0].dtype == np.float32 and 0.0 <= finding.heatmaps[0].min() <= finding.heatmaps[0].max() <= 1.0
    )
    assert len(finding.hotspots) == 1
    spot = finding.hotspots[0]
    assert (spot.source_index, spot.frame) == (0, 2)
    assert 0 <= spot.column <= 128 and 0 <= spot.row <= 128
    assert spot.score == pytest.approx(1.0)
    assert sum(len(m._forward_hooks) for m in network.model.modules()) == 0
    with pytest.raises(net.ImageNotUsable, match="no sources"):
        network.run([])


def test_concurrent_runs_agree(random_weights: Path) -> None:
    network = net.load_thyroid_network(random_weights)
    ds = nm_dataset(phantoms.synthesize("graves", np.random.default_rng(1), matrix=128).counts[np.newaxis])
    expected = network.run([ds]).probabilities
    results: list[dict[str, float]] = []
    threads = [threading.Thread(target=lambda: results.append(dict(network.run([ds]).probabilities))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for result in results:
        assert result == pytest.approx(dict(expected), abs=1e-6)


def test_quick_training_through_the_cli(tmp_path: Path) -> None:
    assert train_cli.main(["thyroid", "--quick", "--out", str(tmp_path), "--threads", "2"]) == 0
    result = json.loads((tmp_path / "thyroid-resnet34.metrics.json").read_text())
    assert result["synthetic"] is True
    assert len(result["cross_validation"]["folds"]) == 2
    assert set(result["cross_validation"]["mean_std"]) >= {"accuracy", "sensitivity", "specificity", "auc", "kappa"}
    card = (tmp_path / "thyroid-resnet34.md").read_text()
    assert "synthetic phantoms only" in card and "--quick" in card
    assert (tmp_path / "thyroid-resnet34.report.png").stat().st_size > 1000
    payload = torch.load(tmp_path / "thyroid-resnet34.pt", weights_only=True)
    assert payload["state_dict"]["conv1.weight"].dtype == torch.float16
    assert payload["state_dict"]["bn1.num_batches_tracked"].dtype == torch.int64
    network = net.load_thyroid_network(tmp_path / "thyroid-resnet34.pt")
    assert network.model.conv1.weight.dtype == torch.float32
    assert network.image_size == 64


def test_fit_is_deterministic() -> None:
    x, y = training.make_dataset(2, seed=0, image_size=32)
    config = training.TrainConfig(epochs=1, image_size=32, batch_size=4)
    first = training.fit(x, y, config, seed=1, log=lambda _: None).state_dict()
    second = training.fit(x, y, config, seed=1, log=lambda _: None).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_stratified_folds_partition_every_class() -> None:
    labels = np.repeat(np.arange(4), 10)
    folds = training.stratified_folds(labels, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    assert all(np.bincount(labels[fold], minlength=4).tolist() == [2, 2, 2, 2] for fold in folds)
    with pytest.raises(ValueError, match="folds"):
        training.stratified_folds(labels, 11, seed=0)


@pytest.mark.skipif(not net.DEFAULT_WEIGHTS.exists(), reason="committed weights not present")
def test_committed_weights_classify_fresh_synthetic_phantoms() -> None:
    """Synthetic sanity check only (not clinical accuracy): a seed the weights never saw, 5 per class."""
    network = net.load_thyroid_network()
    samples = phantoms.generate(5, seed=424242)
    right = 0
    for phantom in samples:
        spacing = phantom.pixel_spacing_mm
        finding = network.run([nm_dataset(phantom.counts[np.newaxis], spacing=spacing)])
        right += finding.predicted == phantom.label
    assert right / len(samples) >= 0.8
