"""ParaNet preprocessing (paper 000 §2.1): each planar image cropped to the neck and mediastinum, annotations and
artefacts removed, resized to the network's square and intensity normalised.

Infer stage, between reading a job's NM sources and the network; training runs the same code on phantom
arrays, so what the network learnt from is what it sees in a site's images (single- or multi-frame, any vendor)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydicom import Dataset

from scintnode.models.i131_neck_preprocess import crop_box
from scintnode.models.nm_input import ImageNotUsable, PlanarFrame, pick_views, read_planar_frames
from scintnode.models.planar import FrameBox, cut_box, intensity_scale

# Side of the square kept: the neck from the submandibular glands down to the upper mediastinum. Fields of view
# up to this are only padded to a square (pinhole images, whose pixel spacing says little, are never cut).
FIELD_MM = 220.0
# A pixel this many times hotter than the median of its 5x5 neighbourhood (plus Poisson noise) is an artefact:
# a dead/hot detector element, a point marker or a burned-in text stroke. Real uptake is blurred by the camera.
_SPIKE_FACTOR = 4.0
# Grey statistics of ImageNet (the mean of its three channels), so a site's ImageNet VGG19 sees its scale.
GREY_MEAN = 0.449
GREY_STD = 0.226


@dataclass(frozen=True)
class PreparedImage:
    """One source image made ready for a ParaNet path, and what maps results back onto its frame."""

    network_input: np.ndarray  # (S, S) float32 0..1 (standardised later, in `standardise`)
    display: np.ndarray  # (rows, columns) float32 0..1: the upright source frame as shown
    box: FrameBox  # the square of the upright frame the network saw
    frame: PlanarFrame


def anterior_frame(ds: Dataset, source_index: int = 0) -> PlanarFrame:
    """The anterior frame of a planar NM image (coded view, then text), else its first frame."""
    frames = read_planar_frames(ds, source_index)
    chosen = pick_views(frames, ["anterior"]).get("anterior")
    if chosen is None:
        named = [f.view for f in frames]
        if len(frames) > 1:
            raise ImageNotUsable(
                f"{ds.get('SOPInstanceUID', '?')} has {len(frames)} frames with views {named} and none is anterior; "
                "ParaNet reads anterior planar views"
            )
        chosen = frames[0]
    return chosen


def remove_artefacts(counts: np.ndarray) -> np.ndarray:
    """Isolated spikes (hot pixels, markers, burned-in text) replaced by their neighbourhood's median."""
    image = np.clip(np.asarray(counts, dtype=np.float32), 0.0, None)
    median = _median5(image)
    spike = image > _SPIKE_FACTOR * median + 3.0 * np.sqrt(median + 1.0) + 2.0
    return np.where(spike, median, image).astype(np.float32)


def _median5(image: np.ndarray) -> np.ndarray:
    # cv2.medianBlur takes float32 only up to a 5x5 kernel, which is what we want.
    return np.asarray(cv2.medianBlur(np.ascontiguousarray(image, dtype=np.float32), 5), dtype=np.float32)


def neck_box(counts: np.ndarray, pixel_spacing_mm: float | None, field_mm: float = FIELD_MM) -> FrameBox:
    """The square the network sees: `field_mm` on the neck's midline when the frame is wider, else the frame."""
    rows, columns = counts.shape
    if pixel_spacing_mm and pixel_spacing_mm > 0 and max(rows, columns) * pixel_spacing_mm > field_mm:
        return crop_box(counts, pixel_spacing_mm, field_mm)
    size = max(rows, columns)
    return FrameBox(rows, columns, (rows - size) // 2, (columns - size) // 2, size)


def prepare_counts(
    counts: np.ndarray, pixel_spacing_mm: float | None, image_size: int, box: FrameBox | None = None
) -> tuple[np.ndarray, np.ndarray, FrameBox]:
    """(network input (S, S) 0..1, display (rows, columns) 0..1, box) of an upright count image.

    `box` reuses another image's crop: the late MIBI image is cut like the early one when both have the same
    grid, so a gland sits at the same input position in both paths, as a reader compares them."""
    clean = remove_artefacts(counts)
    if clean.ndim != 2 or min(clean.shape) < 8:
        raise ImageNotUsable(f"expected a 2-D frame of at least 8x8 pixels, got shape {clean.shape}")
    if box is None or (box.rows, box.columns) != clean.shape:
        box = neck_box(clean, pixel_spacing_mm)
    square = cut_box(clean, box)
    interpolation = cv2.INTER_AREA if box.size > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (image_size, image_size), interpolation=interpolation)
    network_input = np.clip(resized / intensity_scale(resized), 0.0, 1.0).astype(np.float32)
    display = np.clip(clean / intensity_scale(clean), 0.0, 1.0).astype(np.float32)
    return network_input, display, box


def prepare_source(ds: Dataset, source_index: int, image_size: int, box: FrameBox | None = None) -> PreparedImage:
    """A job's NM source through §2.1: anterior frame, upright, cleaned, cropped, resized, normalised."""
    frame = anterior_frame(ds, source_index)
    upright = frame.upright.apply(frame.pixels)
    spacing = min(frame.pixel_spacing_mm) if frame.pixel_spacing_mm else None
    network_input, display, used = prepare_counts(upright, spacing, image_size, box)
    return PreparedImage(network_input, display, used, frame)


def standardise(images: np.ndarray) -> np.ndarray:
    """0..1 grey images to the scale of an ImageNet-trained VGG (zeros, an absent thyroid scan, stay constant)."""
    return ((np.asarray(images, dtype=np.float32) - GREY_MEAN) / GREY_STD).astype(np.float32)
