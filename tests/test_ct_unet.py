"""The dual-phase CT U-Net (scintnode/models/ct_unet.py): shapes, components, episode contract, and a
planted gland found by the committed synthetic-trained weights."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread

from scintnode.models import ct_unet
from scintnode.phantoms import ct_parathyroid


@pytest.fixture(scope="module")
def network() -> ct_unet.CTParathyroidNetwork:
    return ct_unet.load_ct_parathyroid_network()


def test_unet_maps_two_phases_to_one_logit_per_voxel() -> None:
    model = ct_unet.UNet3D()
    with torch.no_grad():
        out = model(torch.zeros(2, 2, 16, 24, 32))
    assert out.shape == (2, 1, 16, 24, 32)


@pytest.mark.parametrize("shape", [(4, 13, 13), (37, 70, 66)])
def test_sliding_windows_cover_any_volume_size(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = ct_unet.UNet3D(widths=(2, 4, 4, 4))
    channels = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    probability = ct_unet.predict_probability(model, channels, window_voxels=(16, 32, 32))
    assert probability.shape == shape and probability.min() >= 0.0 and probability.max() <= 1.0


class FirstChannel(torch.nn.Module):
    """A stand-in U-Net whose logit at each voxel is its first input channel, recording each pass's batch."""

    multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return x[:, :1]


def test_windows_run_in_pairs_and_each_lands_where_it_was_cut() -> None:
    # 9 windows of (16, 32, 32) over (16, 72, 72): four pairs and a lone window
    channels = np.random.default_rng(1).normal(0.0, 2.0, (2, 16, 72, 72)).astype(np.float32)
    model = FirstChannel()
    probability = ct_unet.predict_probability(model, channels, window_voxels=(16, 32, 32))  # type: ignore[arg-type]
    np.testing.assert_allclose(probability, torch.sigmoid(torch.from_numpy(channels[0])).numpy(), atol=1e-6)
    assert model.batches == [2, 2, 2, 2, 2], "every pass holds two windows (the lone one paired with itself)"


def test_components_are_26_connected_and_small_ones_dropped() -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[5, 5, 5] = True  # touches the cube only at a corner: same component
    mask[9:11, 9:11, 9:11] = True  # 8 voxels, a separate one
    labels, count = ct_unet.label_components(mask)
    assert count == 2 and labels[5, 5, 5] == labels[1, 1, 1] != labels[9, 9, 9]
    detection = ct_unet.detect(mask.astype(np.float32) * 0.9, voxel_mm3=1.0)
    assert detection.gland_probabilities == pytest.approx((0.9,))  # the 8 mm^3 one is under MIN_GLAND_MM3
    assert int((detection.labels == 1).sum()) == 65


def test_single_inputs_and_missing_phases_are_refused_clearly(network: ct_unet.CTParathyroidNetwork) -> None:
    with pytest.raises(ValueError, match="needs an episode"):
        network.run([])
    with pytest.raises(ValueError, match="needs the enhanced CT series"):
        network.run_episode(["unenhanced"], [object()])  # type: ignore[list-item]


def test_a_planted_gland_is_found_by_the_committed_weights(
    network: ct_unet.CTParathyroidNetwork, tmp_path: Path
) -> None:
    phantom = ct_parathyroid.synthesize(np.random.default_rng(20260))
    entry = ct_parathyroid.write_phantom(phantom, tmp_path / "case", "SYNPLANT", dt.datetime(2026, 3, 1, 9, 0))
    files = {phase: [tmp_path / f for f in entry[phase]["files"]] for phase in ("unenhanced", "enhanced")}  # type: ignore[index]
    slots = ["unenhanced"] * len(files["unenhanced"]) + ["enhanced"] * len(files["enhanced"])
    sources = [dcmread(f) for f in files["unenhanced"] + files["enhanced"]]
    finding = network.run_episode(slots, sources)
    assert finding.volume is not None and finding.predicted == "glands"
    truth = [np.array(g["centre_mm_lps"]) for g in entry["glands"]]  # type: ignore[union-attr]
    found = [r for r in finding.volume.regions if min(np.linalg.norm(np.array(r.centre_mm) - t) for t in truth) < 10]
    assert found, f"no region near a planted gland: {finding.volume.regions} vs {truth}"
    assert finding.volume.labels.shape == phantom.labels.shape
    assert finding.model.trained_on_synthetic
