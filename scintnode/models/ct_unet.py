"""Dual-phase neck CT parathyroid finder of paper 001 (Li et al., Intelligent Oncology 2025): a 3D U-Net.

Called by infer for episode jobs routed to "ct-parathyroid-unet": the unenhanced and enhanced series in,
a Finding out with the gland mask on the unenhanced slices and one measured region per gland.

Flow: both series become volumes (ct_volume.py), are resampled onto one isotropic grid on the unenhanced
series' axes, windowed and stacked as two channels; the U-Net's probability (sliding windows, so a whole
neck fits in CPU memory) goes back onto the unenhanced slices; thresholded, split into connected
components, and each component large enough becomes a gland with volume, centre, side and probability."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom import Dataset
from torch import Tensor, nn

from scintnode.config import DEFAULT_DEVICE
from scintnode.finding import Finding, Region, VolumeMask
from scintnode.models.ct_volume import (
    Box,
    CTVolume,
    Grid,
    assemble_volume,
    grid_to_slices,
    reach_of,
    resample_to_grid,
)
from scintnode.models.device import model_device, torch_device
from scintnode.models.spec import Code, LabelSpec, ModelSpec
from scintnode.models.weights_file import file_sha256, load_float_state, save_half_precision

NAME = "ct-parathyroid-unet"
VERSION = "1.0"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / f"{NAME}.pt"
TRAIN_COMMAND = "scintnode train ct-parathyroid"
SLOTS = ("unenhanced", "enhanced")
WEIGHT_CLASSES = ("parathyroid",)  # one sigmoid output: gland or not

GRID_MM = 1.0  # isotropic grid the network sees (the synthetic studies are acquired at about this)
# Soft-tissue window: glands, thyroid and vessels differ within it; bone and air saturate.
WINDOW_HU = (-160.0, 240.0)
WIDTHS = (8, 16, 32, 64)  # channels per level; 3 poolings, so inputs are padded to multiples of 8
# Sliding window (slices, rows, columns) at inference: the training patch, since instance norm's statistics
# depend on what the window holds (a whole neck with the air around it normalises differently).
WINDOW_VOXELS = (32, 48, 48)
# Windows per forward pass: 2 was fastest on 2 CPU cores (3 and 4 took 10-30 % longer per window); it also
# bounds memory, each window's activations being about 10 MB at full resolution.
WINDOWS_PER_PASS = 2
THRESHOLD = 0.5
MIN_GLAND_MM3 = 15.0  # smaller components are noise: the smallest synthetic gland is ~35 mm^3
MIDLINE_MARGIN_MM = 3.0
MAX_GLANDS = 16  # the largest are kept; people have 4, rarely up to 8 (SEG segments, SR groups stay readable)

PARATHYROID = Code("111002", "SCT", "Parathyroid")
LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("glands", "Parathyroid gland(s) found", Code("52101004", "SCT", "Present")),
    LabelSpec("none", "No parathyroid gland found", Code("272519000", "SCT", "Absent")),
)
PROCEDURE = Code("25045-6", "LN", "CT unspecified body region")


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each with instance norm and leaky ReLU (the nnU-Net stage).

    Instance norm is written as GroupNorm with one group per channel: the same function and parameters,
    and torch's CPU kernel for it is ~2.5 times faster than InstanceNorm3d's."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(
            nn.Conv3d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.GroupNorm(channels_out, channels_out),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(channels_out, channels_out, 3, padding=1, bias=False),
            nn.GroupNorm(channels_out, channels_out),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """3D U-Net (Cicek et al. 2016) with nnU-Net's choices: strided-conv down, transposed-conv up, skip
    concatenation. Input (N, 2, D, H, W) with D, H, W multiples of 8; output (N, 1, D, H, W) logits."""

    def __init__(self, in_channels: int = 2, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        widths = tuple(widths)
        self.stem = ConvBlock(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(a, b, 2, stride=2, bias=False), ConvBlock(b, b)) for a, b in pairwise(widths)
        )
        self.up = nn.ModuleList(nn.ConvTranspose3d(b, a, 2, stride=2) for a, b in pairwise(widths))
        self.merge = nn.ModuleList(ConvBlock(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv3d(widths[0], 1, 1)
        self.multiple = 2 ** (len(widths) - 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            y = merge(torch.cat([skips.pop(), up(y)], dim=1))
        return self.head(y)  # type: ignore[no-any-return]


def window(hu: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HU to 0..1 in the soft-tissue window (float32), into `out` when given; in place, as a CT grid is
    some 10 million voxels."""
    low, high = WINDOW_HU
    windowed: np.ndarray = np.subtract(hu, low, out=out, dtype=np.float32)
    windowed /= high - low
    np.clip(windowed, 0.0, 1.0, out=windowed)
    return windowed


def network_input(unenhanced_hu: np.ndarray, enhanced_hu: np.ndarray) -> np.ndarray:
    """The two phases on one grid as the (2, D, H, W) windowed channels the U-Net takes."""
    if unenhanced_hu.shape != enhanced_hu.shape:
        raise ValueError(f"phases differ in shape: {unenhanced_hu.shape} vs {enhanced_hu.shape}")
    channels = np.empty((2, *unenhanced_hu.shape), dtype=np.float32)
    for channel, hu in zip(channels, (unenhanced_hu, enhanced_hu), strict=True):
        window(hu, out=channel)
    return channels


def predict_probability(
    model: UNet3D, channels: np.ndarray, window_voxels: Sequence[int] = WINDOW_VOXELS
) -> np.ndarray:
    """Gland probability (D, H, W) for (2, D, H, W) channels: overlapping windows, averaged where they overlap.

    Any volume size works: it is padded (with the window's air value 0) to multiples of 8 and at least one
    window; memory is bounded by WINDOWS_PER_PASS windows, not the volume.

    A window whose channels are all 0 (air or lung in both phases, nothing inside the soft-tissue window)
    is not run: it shows the network nothing to find, and much of a CT's field of view around a neck is such
    windows. Every window over a voxel with tissue holds that voxel, so runs, and the voxel's
    probability is what a pass over every window gives; a voxel only skipped windows cover gets 0."""
    _, *size = channels.shape
    step = model.multiple
    win = [max(step, min(int(w), -(-s // step) * step)) for w, s in zip(window_voxels, size, strict=True)]
    padded_size = [max(w, -(-s // step) * step) for w, s in zip(win, size, strict=True)]
    x = np.zeros((2, *padded_size), dtype=np.float32)
    x[:, : size[0], : size[1], : size[2]] = channels
    total = np.zeros(padded_size, dtype=np.float32)
    weight = np.zeros(padded_size, dtype=np.float32)
    starts = [_starts(s, w) for s, w in zip(padded_size, win, strict=True)]
    every_box = [
        (slice(z, z + win[0]), slice(y, y + win[1]), slice(xx, xx + win[2]))
        for z in starts[0]
        for y in starts[1]
        for xx in starts[2]
    ]
    boxes = [box for box in every_box if x[(slice(None), *box)].any()]
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for start in range(0, len(boxes), WINDOWS_PER_PASS):
            group = boxes[start : start + WINDOWS_PER_PASS]
            # torch's CPU convolution takes its slow im2col path, not oneDNN, for a batch of one small 3-D input
            # with 3x3x3 kernels (`ConvParams::use_mkldnn`): one window alone costs about 5 times a window in a
            # pair, so a lone window runs paired with itself. Instance norm is per item: batching changes nothing.
            batch = np.stack([x[(slice(None), *box)] for box in group] * (2 if len(group) == 1 else 1))
            probabilities = torch.sigmoid(model(torch.from_numpy(batch).to(device)))[:, 0].cpu().numpy()
            for box, probability in zip(group, probabilities[: len(group)], strict=True):
                total[box] += probability
                weight[box] += 1.0
    np.divide(total, weight, out=total, where=weight > 0)  # where no window ran, total stays 0
    return total[: size[0], : size[1], : size[2]]


def _starts(size: int, window_size: int) -> list[int]:
    """Window starts covering 0..size with as few windows as possible, spread evenly; the last ends at `size`."""
    if size <= window_size:
        return [0]
    count = int(np.ceil((size - window_size) / window_size)) + 1
    return sorted({round(i * (size - window_size) / (count - 1)) for i in range(count)})


Voxels = tuple[np.ndarray, ...]  # voxel indices, one array per axis, as np.nonzero gives them


def voxel_components(mask: np.ndarray) -> tuple[Voxels, np.ndarray, int]:
    """26-connected components of a boolean 3D mask: its voxels (np.nonzero order), each one's component
    1..n, and n.

    8-connected components per slice (OpenCV), then merged where a component touches one on the next slice
    within its 3x3 neighbourhood. Only slices holding voxels are labelled and only the voxels are compared,
    so the work follows the mask, not the volume: a clinical CT has some 50 million voxels on its own slices,
    the glands a few thousand."""
    # np.nonzero over the image rows that hold voxels only: over a clinical CT's whole mask it took 0.1 s
    lines = mask.reshape(-1, mask.shape[-1])
    occupied = np.flatnonzero(lines.any(axis=1))
    line, columns = np.nonzero(lines[occupied])
    slice_of, rows = np.divmod(occupied[line], mask.shape[1])
    voxels = (slice_of, rows, columns)
    ids = np.zeros(slice_of.size, dtype=np.int64)
    starts = np.searchsorted(slice_of, np.arange(mask.shape[0] + 1))
    codes = []  # (label below << 32) | label above, for each touching pair
    offset = below_offset = 0
    below: np.ndarray | None = None  # the previous slice's own labels, padded by one, when it held voxels
    for k in range(mask.shape[0]):
        first, last = starts[k], starts[k + 1]
        if first == last:
            below = None
            continue
        count, plane = cv2.connectedComponents(mask[k].astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        here = plane[rows[first:last], columns[first:last]].astype(np.int64) + offset
        ids[first:last] = here
        if below is not None:
            for dr in (0, 1, 2):
                for dc in (0, 1, 2):
                    under = below[rows[first:last] + dr, columns[first:last] + dc]
                    touching = under > 0
                    codes.append(((under[touching].astype(np.int64) + below_offset) << 32) | here[touching])
        below, below_offset = np.pad(plane, 1), offset
        offset += count - 1
    parent = np.arange(offset + 1)

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = int(parent[n])
        return n

    for code in np.unique(np.concatenate(codes)) if codes else ():
        ra, rb = root(int(code) >> 32), root(int(code) & 0xFFFFFFFF)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(n) for n in range(offset + 1)])
    _, dense = np.unique(roots, return_inverse=True)  # root 0 (background) stays 0
    return voxels, dense[ids], int(dense.max())


@dataclass(frozen=True)
class Detection:
    """The network's answer on one volume: the kept glands as labels 1..n."""

    labels: np.ndarray  # uint8 (slices, rows, columns); glands ordered by size, largest first
    gland_probabilities: tuple[float, ...]  # highest probability inside each gland
    gland_boxes: tuple[Box, ...]  # each gland's bounding box in `labels`


def detect(probability: np.ndarray, voxel_mm3: float, threshold: float = THRESHOLD) -> Detection:
    """Threshold, split into components, drop those under MIN_GLAND_MM3, keep the MAX_GLANDS largest;
    the largest gland is number 1."""
    voxels, ids, count = voxel_components(probability >= threshold)
    sizes = np.bincount(ids, minlength=count + 1)
    kept = [n for n in range(1, count + 1) if sizes[n] * voxel_mm3 >= MIN_GLAND_MM3]
    kept = sorted(kept, key=lambda n: -sizes[n])[:MAX_GLANDS]
    labels = np.zeros(probability.shape, dtype=np.uint8)
    peaks, boxes = [], []
    for number, component in enumerate(kept, start=1):
        own = ids == component
        where = tuple(axis[own] for axis in voxels)
        labels[where] = number
        peaks.append(float(probability[where].max()))
        boxes.append(tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in where))
    return Detection(labels, tuple(peaks), tuple(boxes))


def detect_on_slices(on_grid: np.ndarray, grid: Grid, volume: CTVolume, threshold: float = THRESHOLD) -> Detection:
    """`detect` of the probability `on_grid` brought back onto `volume`'s slices, brought back only onto the
    block that its voxels at or over the threshold reach (ct_volume.reach_of): every voxel outside that block
    blends grid voxels under the threshold, so it is under it too, and the glands are the same. A clinical
    CT's slices hold some 50 million voxels, and the whole map on them was a 200 MB array per job."""
    labels = np.zeros(volume.shape, dtype=np.uint8)
    box = reach_of(on_grid >= threshold, grid, volume)
    if box is None:
        return Detection(labels, (), ())
    found = detect(grid_to_slices(on_grid, grid, volume, box), _voxel_mm3(volume), threshold)
    labels[box] = found.labels
    moved = tuple(
        tuple(slice(part.start + block.start, part.stop + block.start) for part, block in zip(gland, box, strict=True))
        for gland in found.gland_boxes
    )
    return Detection(labels, found.gland_probabilities, moved)


class CTParathyroidNetwork:
    """The loaded U-Net; runs are serialised by a lock so one instance can serve the job runner."""

    def __init__(self, model: UNet3D, spec: ModelSpec, window_voxels: Sequence[int] = WINDOW_VOXELS) -> None:
        self.model = model.eval()  # runs where its weights are (`load_ct_parathyroid_network` puts them)
        self.spec = spec
        self.window_voxels = tuple(window_voxels)
        self._lock = threading.Lock()

    def run(self, sources: Sequence[Dataset]) -> Finding:
        raise ValueError(
            f"{NAME} needs an episode: an unenhanced and an enhanced CT series of one neck, each in its slot "
            f"({', '.join(SLOTS)}); route it with an `episode:` rule (rules/ct-parathyroid.yaml)"
        )

    def run_episode(self, slots: Sequence[str], sources: Sequence[Dataset]) -> Finding:
        """Find the glands; the mask is drawn on the unenhanced series (the enhanced one is resampled onto it)."""
        if len(slots) != len(sources):
            raise ValueError(f"{len(slots)} slot names for {len(sources)} images")
        unknown = sorted(set(slots) - set(SLOTS))
        if unknown:
            raise ValueError(f"{NAME} takes slots {', '.join(SLOTS)}, not {', '.join(unknown)}")
        members = {slot: [ds for name, ds in zip(slots, sources, strict=True) if name == slot] for slot in SLOTS}
        for slot, datasets in members.items():
            if not datasets:
                raise ValueError(
                    f"{NAME} needs the {slot} CT series; the episode has none (slots: {sorted(set(slots))})"
                )
        phases = {slot: assemble_volume(datasets) for slot, datasets in members.items()}
        reference = phases["unenhanced"]
        grid = Grid.over(reference, GRID_MM)
        channels = network_input(resample_to_grid(reference, grid), resample_to_grid(phases["enhanced"], grid))
        with self._lock:
            started = time.perf_counter()
            on_grid = predict_probability(self.model, channels, self.window_voxels)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
        detection = detect_on_slices(on_grid, grid, reference)
        return self._finding(reference, detection, float(on_grid.max()), elapsed_ms)

    def _finding(self, reference: CTVolume, detection: Detection, peak: float, elapsed_ms: float) -> Finding:
        midline = _midline_x(reference)
        regions = tuple(
            _region(reference, detection.labels, box, number, probability, midline)
            for number, (probability, box) in enumerate(
                zip(detection.gland_probabilities, detection.gland_boxes, strict=True), start=1
            )
        )
        # Without a kept gland the finding's probability is the highest anywhere, kept below the threshold:
        # the size filter is part of the decision.
        found = max(detection.gland_probabilities) if regions else min(peak, THRESHOLD - 1e-3)
        return Finding(
            model=self.spec,
            predicted="glands" if regions else "none",
            probabilities={"glands": found, "none": 1.0 - found},
            hotspots=(),
            inference_ms=elapsed_ms,
            volume=VolumeMask(
                labels=detection.labels,
                slice_sop_uids=reference.sop_instance_uids,
                series_uid=reference.series_uid,
                regions=regions,
                display_window_hu=WINDOW_HU,
            ),
        )


def _voxel_mm3(volume: CTVolume) -> float:
    offsets = volume.slice_offsets
    depth = float(np.median(np.diff(offsets))) if len(offsets) > 1 else 1.0
    return volume.pixel_spacing[0] * volume.pixel_spacing[1] * depth


def _patient_points(volume: CTVolume, index: np.ndarray) -> np.ndarray:
    """Patient coordinates of (slice, row, column) voxel indices (n, 3); slices by their own positions."""
    k, r, c = index[:, 0], index[:, 1], index[:, 2]
    return np.asarray(
        volume.positions[k]
        + (r * volume.pixel_spacing[0])[:, None] * volume.column_direction
        + (c * volume.pixel_spacing[1])[:, None] * volume.row_direction
    )


def _midline_x(volume: CTVolume) -> float:
    """Patient x (LPS) of the neck's midline: the mean x of the body's soft tissue on the middle slice."""
    middle = volume.shape[0] // 2
    rows, columns = np.nonzero(volume.hounsfield_slice(middle) > -300.0)
    if rows.size == 0:
        return float(_patient_points(volume, np.array([[middle, 0, 0]]))[0, 0])
    index = np.stack([np.full(rows.shape, middle), rows, columns], axis=1)
    return float(_patient_points(volume, index)[:, 0].mean())


def _region(volume: CTVolume, labels: np.ndarray, box: Box, number: int, probability: float, midline: float) -> Region:
    inside = labels[box] == number
    points = _patient_points(volume, np.argwhere(inside) + [axis.start for axis in box])
    centre = points.mean(axis=0)
    side = "midline"
    if centre[0] < midline - MIDLINE_MARGIN_MM:
        side = "right"  # LPS: the patient's right is -x
    elif centre[0] > midline + MIDLINE_MARGIN_MM:
        side = "left"
    return Region(
        number=number,
        label=f"Parathyroid gland candidate {number}",
        volume_mm3=float(inside.sum()) * _voxel_mm3(volume),
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        side=side,
        probability=probability,
    )


def model_spec(weights_sha256: str, version: str = VERSION) -> ModelSpec:
    return ModelSpec(
        name=NAME,
        version=version,
        title="Parathyroid glands on dual-phase neck CT (3D U-Net)",
        labels=LABELS,
        finding_site=PARATHYROID,
        procedure=PROCEDURE,
        weights_sha256=weights_sha256,
        trained_on_synthetic=True,
    )


def save_weights(model: UNet3D, path: Path, meta: dict[str, Any]) -> None:
    save_half_precision(model, path, {"network": NAME, "widths": list(WIDTHS), **meta}, WEIGHT_CLASSES)


def load_weights(path: Path) -> tuple[UNet3D, dict[str, Any]]:
    state, meta = load_float_state(path, WEIGHT_CLASSES, TRAIN_COMMAND)
    model = UNet3D(widths=[int(w) for w in meta.get("widths", WIDTHS)])
    model.load_state_dict(state)
    return model.eval(), meta


def load_ct_parathyroid_network(path: Path = DEFAULT_WEIGHTS, device: str = DEFAULT_DEVICE) -> CTParathyroidNetwork:
    """The network from its committed weights (fp16 on disk, float32 in memory), on the device the
    `inference_device` setting `device` names."""
    model, meta = load_weights(path)
    model = model.to(torch_device(device))
    training = meta.get("training") or {}
    window = [int(v) for v in training.get("patch", WINDOW_VOXELS)]
    return CTParathyroidNetwork(model, model_spec(file_sha256(path), str(meta.get("version", VERSION))), window)
