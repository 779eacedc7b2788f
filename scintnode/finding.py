"""What a network concluded about its input images: produced by infer, consumed by the writers.

Pure values: no DICOM objects inside, so writers and tests can build one by hand."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from scintnode.models.spec import Code, ModelSpec


@dataclass(frozen=True)
class Hotspot:
    """A point the heatmap singles out, in the pixel space of one source image frame."""

    source_index: int  # index into the job's source datasets
    frame: int  # 1-based frame number within that source (NM is always multi-frame)
    column: float
    row: float
    score: float  # heatmap value at the point, 0..1
    label: str  # e.g. "Grad-CAM peak"
    # Where the point lies, when the network says (e.g. a parathyroid gland candidate); the SR writes these
    # as its Finding Site instead of the model's organ.
    site: Code | None = None  # anatomic location, e.g. Parathyroid (111002, SCT)
    laterality: Code | None = None  # Right (24028007, SCT) / Left (7771000, SCT)
    site_modifier: Code | None = None  # topographical modifier, e.g. Superior (264217000, SCT)


@dataclass(frozen=True)
class Panel:
    """One frame shown in a several-view heatmap picture, e.g. the anterior or posterior of a whole-body scan."""

    source_index: int
    frame: int  # 1-based
    display: np.ndarray  # the frame as shown, float32 0..1, on the source frame's grid
    heatmap: np.ndarray  # float32 0..1, same shape
    caption: str  # e.g. "Anterior"


@dataclass(frozen=True)
class Region:
    """One structure a segmenting network found (e.g. a parathyroid gland): its SEG segment and measurements."""

    number: int  # 1-based: its value in VolumeMask.labels and its SEG segment number
    label: str  # e.g. "Parathyroid gland candidate 1"
    volume_mm3: float
    centre_mm: tuple[float, float, float]  # centre of mass, patient coordinates (LPS)
    side: str  # "right", "left" or "midline" of the patient
    probability: float  # 0..1, highest inside the region


@dataclass(frozen=True)
class VolumeMask:
    """A labelled mask drawn on the slices of one source series (a CT), as a SEG is written from it."""

    labels: np.ndarray  # uint8 (slices, rows, columns): 0 background, n = Region n
    slice_sop_uids: tuple[str, ...]  # SOP Instance UID of the source slice under each mask slice
    series_uid: str  # that series
    regions: tuple[Region, ...]
    display_window_hu: tuple[float, float] = (-160.0, 240.0)  # for key images

    def centre_slice(self, number: int) -> int:
        """Index of the mask slice through the middle of region `number` (its key image)."""
        counts = self.voxels_per_slice
        weights = counts[:, number] if number < counts.shape[1] else np.zeros(len(counts), dtype=np.int64)
        slices = np.flatnonzero(weights)
        if slices.size == 0:
            raise ValueError(f"region {number} has no voxel in the mask")
        return round(float(np.average(slices, weights=weights[slices])))

    @functools.cached_property
    def voxels_per_slice(self) -> np.ndarray:
        """(slices, largest label + 1) voxel counts; column 0 is not counted. The SR, the key image and the
        SEG all ask for it. A clinical CT mask has some 50 million voxels, nearly all 0: the block holding
        every region is found first from the mask's maxima (about 4 ms), and only that block is counted."""
        slices = len(self.labels)
        maxima = self.labels.reshape(slices, -1).max(axis=1) if self.labels.size else np.zeros(slices, np.uint8)
        occupied = np.flatnonzero(maxima)
        if occupied.size == 0:
            return np.zeros((slices, 1), dtype=np.int64)
        first = int(occupied[0])
        block = self.labels[first : int(occupied[-1]) + 1]
        plane = block.max(axis=0)
        rows, columns = np.flatnonzero(plane.max(axis=1)), np.flatnonzero(plane.max(axis=0))
        block = block[:, rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        width = int(block.max()) + 1
        counts = np.zeros((slices, width), dtype=np.int64)
        for index in occupied:
            counts[index] = np.bincount(block[index - first].ravel(), minlength=width)
        counts[:, 0] = 0
        return counts


@dataclass(frozen=True)
class Finding:
    """A classifier's answer for one job, with the maps that explain it."""

    model: ModelSpec
    predicted: str  # a LabelSpec.key of model
    probabilities: Mapping[str, float]  # label key -> probability 0..1, sums to 1
    hotspots: tuple[Hotspot, ...]
    # per source image used: the frame as shown (float32 0..1) and its heatmap (float32 0..1), same shape
    display_images: tuple[np.ndarray, ...] = field(default=())
    heatmaps: tuple[np.ndarray, ...] = field(default=())
    source_frames: tuple[int, ...] = field(default=())  # 1-based frame shown, per source
    inference_ms: float = 0.0  # the network's forward pass(es), as the network timed them
    explain_ms: float = 0.0  # its Grad-CAM, timed apart: outside the network in issue 10's accounting
    # Every frame the network used, when a source shows more than one (write/sc.py puts a source's panels
    # side by side in its SC); display_images/heatmaps above still hold each source's first panel.
    panels: tuple[Panel, ...] = field(default=())
    # A segmenting network's mask and regions (write/seg.py makes the SEG, the SR one group per region).
    volume: VolumeMask | None = None
