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
from scintnode.models.ct_volume import Grid, grid_to_slices
from scintnode.phantoms import ct_parathyroid
from tests.test_ct_volume import fine_volumes


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


def every_window_probability(model: ct_unet.UNet3D, channels: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """The oracle: every window run (each paired with itself), averaged where windows overlap. Only for
    shapes that are multiples of 8 and at least a window, which predict_probability does not pad."""
    total = np.zeros(channels.shape[1:], dtype=np.float64)
    weight = np.zeros(channels.shape[1:])
    starts = [ct_unet._starts(s, w) for s, w in zip(channels.shape[1:], window, strict=True)]
    with torch.no_grad():
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    box = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
                    cut = torch.from_numpy(np.stack([channels[(slice(None), *box)]] * 2))
                    total[box] += torch.sigmoid(model(cut))[0, 0].numpy()
                    weight[box] += 1.0
    return total / weight


def test_windows_of_air_are_not_run_and_tissue_keeps_its_probability() -> None:
    # 2 x 2 x 3 windows of (16, 32, 32) over (32, 40, 96); tissue in one corner lies in two of them
    torch.manual_seed(0)
    model = ct_unet.UNet3D(widths=(2, 4, 4, 4)).eval()
    channels = np.zeros((2, 32, 40, 96), dtype=np.float32)
    channels[:, :10, :10, :20] = np.random.default_rng(2).random((2, 10, 10, 20), dtype=np.float32)
    runs: list[int] = []
    model.register_forward_hook(lambda _module, inputs, _output: runs.append(inputs[0].shape[0]))
    probability = ct_unet.predict_probability(model, channels, window_voxels=(16, 32, 32))
    assert runs == [2], "one pass: the two windows that hold tissue"
    oracle = every_window_probability(model, channels, (16, 32, 32))
    tissue = channels.any(axis=0)
    np.testing.assert_allclose(probability[tissue], oracle[tissue], atol=1e-6)
    covered_by_run_windows = np.zeros(tissue.shape, dtype=bool)
    covered_by_run_windows[:16, :, :32] = True
    assert (probability[~covered_by_run_windows] == 0.0).all()
    assert (probability[covered_by_run_windows] > 0.0).all()


def test_a_volume_of_air_runs_no_window_and_finds_nothing() -> None:
    model = FirstChannel()
    probability = ct_unet.predict_probability(model, np.zeros((2, 20, 50, 50), dtype=np.float32))  # type: ignore[arg-type]
    assert model.batches == [] and probability.shape == (20, 50, 50) and not probability.any()
    assert not ct_unet.detect(probability, 1.0).gland_probabilities


def test_components_are_26_connected_and_small_ones_dropped() -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[5, 5, 5] = True  # touches the cube only at a corner: same component
    mask[9:11, 9:11, 9:11] = True  # 8 voxels, a separate one
    mask[7, 1, 10] = mask[9, 1, 10] = True  # the same spot two slices apart, an empty slice between
    labels, count = dense_components(mask)
    assert count == 4 and labels[5, 5, 5] == labels[1, 1, 1] != labels[9, 9, 9]
    assert labels[7, 1, 10] != labels[9, 1, 10]
    detection = ct_unet.detect(mask.astype(np.float32) * 0.9, voxel_mm3=1.0)
    assert detection.gland_probabilities == pytest.approx((0.9,))  # the 8 mm^3 one is under MIN_GLAND_MM3
    assert int((detection.labels == 1).sum()) == 65


def dense_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    voxels, ids, count = ct_unet.voxel_components(mask)
    labels = np.zeros(mask.shape, dtype=np.int64)
    labels[voxels] = ids
    return labels, count


def flood_fill_components(mask: np.ndarray) -> np.ndarray:
    """The oracle: 26-connected components by breadth-first search from every unvisited voxel."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    steps = [d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]
    count = 0
    for seed in zip(*np.nonzero(mask), strict=True):
        if labels[seed]:
            continue
        count += 1
        labels[seed] = count
        queue = [seed]
        while queue:
            voxel = queue.pop()
            for step in steps:
                near = tuple(v + s - 1 for v, s in zip(voxel, step, strict=True))
                inside = all(0 <= n < size for n, size in zip(near, mask.shape, strict=True))
                if inside and mask[near] and not labels[near]:
                    labels[near] = count
                    queue.append(near)
    return labels


@pytest.mark.parametrize("seed", range(8))
def test_components_equal_a_flood_fill(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # sparse noise, diagonal chains across slices, and U shapes whose arms meet only slices later
    mask = rng.random((9, 14, 15)) < [0.05, 0.15, 0.3][seed % 3]
    labels, count = dense_components(mask)
    expected = flood_fill_components(mask)
    assert count == expected.max() and set(np.unique(labels)) == set(range(count + 1))
    pairs = np.unique(np.stack([labels.ravel(), expected.ravel()]), axis=1)
    assert pairs.shape[1] == count + 1, "the same voxels share a label in both"


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    return tuple(slice(int(low), int(high) + 1) for low, high in zip(where.min(axis=0), where.max(axis=0), strict=True))


def whole_volume_detection(probability: np.ndarray, voxel_mm3: float) -> list[np.ndarray]:
    """The oracle: components by flood fill; each kept gland's mask, largest first."""
    components = flood_fill_components(probability >= ct_unet.THRESHOLD)
    count = int(components.max())
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    kept = [n for n in range(1, count + 1) if sizes[n] * voxel_mm3 >= ct_unet.MIN_GLAND_MM3]
    return [components == n for n in sorted(kept, key=lambda n: -sizes[n])[: ct_unet.MAX_GLANDS]]


@pytest.mark.parametrize("seed", range(6))
def test_glands_equal_those_of_a_flood_fill(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0.0, 0.45, (30, 80, 90)).astype(np.float32)
    for _ in range(rng.integers(2, 9)):  # blobs of 1 to 300 voxels anywhere, some at the volume's edges
        start = [int(rng.integers(0, n - 1)) for n in probability.shape]
        box = tuple(slice(s, s + int(rng.integers(1, 8))) for s in start)
        probability[box] = np.where(rng.random(probability[box].shape) < 0.9, rng.uniform(0.5, 1.0), 0.2)
    detection = ct_unet.detect(probability, voxel_mm3=0.5)
    expected = whole_volume_detection(probability, voxel_mm3=0.5)
    assert detection.labels.dtype == np.uint8 and detection.labels.shape == probability.shape
    assert len(detection.gland_probabilities) == len(expected) == len(detection.gland_boxes)
    for number, (inside, box) in enumerate(zip(expected, detection.gland_boxes, strict=True), start=1):
        assert np.array_equal(detection.labels == number, inside)
        assert detection.gland_probabilities[number - 1] == float(probability[inside].max())
        assert box == bounding_box(inside)
    assert int(detection.labels.max()) == len(expected)


def test_nothing_over_the_threshold_finds_no_gland() -> None:
    detection = ct_unet.detect(np.full((5, 6, 7), ct_unet.THRESHOLD - 1e-3, np.float32), voxel_mm3=1.0)
    assert detection.gland_probabilities == () and detection.gland_boxes == () and not detection.labels.any()


@pytest.mark.parametrize("seed", range(4))
def test_glands_brought_back_onto_their_reach_equal_those_of_the_whole_map(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for volume in fine_volumes(rng):  # one volume sampled axis by axis, one point by point
        grid = Grid.over(volume, 1.0)
        on_grid = rng.uniform(0.0, 0.3, grid.shape).astype(np.float32)
        for _ in range(3):  # glands of a few grid voxels, at the grid's edges too
            start = [int(rng.choice([0, rng.integers(0, n), n - 4])) for n in grid.shape]
            on_grid[tuple(slice(s, s + 4) for s in start)] = rng.uniform(0.6, 1.0)
        whole = ct_unet.detect(grid_to_slices(on_grid, grid, volume), ct_unet._voxel_mm3(volume))
        reached = ct_unet.detect_on_slices(on_grid, grid, volume)
        assert whole.gland_probabilities, "the case holds glands"
        assert np.array_equal(reached.labels, whole.labels)
        assert reached.gland_probabilities == whole.gland_probabilities
        assert reached.gland_boxes == whole.gland_boxes
        nothing = ct_unet.detect_on_slices(np.minimum(on_grid, 0.4), grid, volume)
        assert nothing.gland_probabilities == () and not nothing.labels.any()
        assert nothing.labels.shape == volume.shape


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
