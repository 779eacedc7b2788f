"""What a network concluded about its input images: produced by infer, consumed by the writers.

Pure values: no DICOM objects inside, so writers and tests can build one by hand."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from scintnode.models.spec import ModelSpec


@dataclass(frozen=True)
class Hotspot:
    """A point the heatmap singles out, in the pixel space of one source image frame."""

    source_index: int  # index into the job's source datasets
    frame: int  # 1-based frame number within that source (NM is always multi-frame)
    column: float
    row: float
    score: float  # heatmap value at the point, 0..1
    label: str  # e.g. "Grad-CAM peak"


@dataclass(frozen=True)
class Panel:
    """One frame shown in a several-view heatmap picture, e.g. the anterior or posterior of a whole-body scan."""

    source_index: int
    frame: int  # 1-based
    display: np.ndarray  # the frame as shown, float32 0..1, on the source frame's grid
    heatmap: np.ndarray  # float32 0..1, same shape
    caption: str  # e.g. "Anterior"


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
    inference_ms: float = 0.0
    # Every frame the network used, when a source shows more than one (write/sc.py puts a source's panels
    # side by side in its SC); display_images/heatmaps above still hold each source's first panel.
    panels: tuple[Panel, ...] = field(default=())
