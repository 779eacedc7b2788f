"""Planar NM frames to network inputs and back: shared by the networks that read one planar frame.

Infer calls a network; the network reads its frame here (anterior view, rescaled counts), standardises its grid
for an ImageNet-style backbone, and maps its Grad-CAM back onto the source frame as a heatmap and a hot spot."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pydicom import Dataset
from torch import Tensor, nn

from scintnode.cam import ClassActivationMap
from scintnode.finding import Finding, Hotspot
from scintnode.models.spec import ModelSpec

# ImageNet statistics, so a site's ImageNet-pretrained backbone sees inputs on the scale it was trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTENSITY_PERCENTILE = 99.8
# View Code Sequence values of an anterior projection, SCT and the legacy SRT older cameras send.
ANTERIOR_CODES = frozenset({"399321004", "G-5215"})


class ImageNotUsable(ValueError):
    """The source cannot be read as a planar grey image; the message says why."""


@dataclass(frozen=True)
class FrameBox:
    """The square of the source frame (pixel indices, may reach past its edges) the network looked at."""

    rows: int  # source frame shape
    columns: int
    top: int
    left: int
    size: int


@dataclass(frozen=True)
class SourceFrame:
    """The planar frame of a source dataset the network reads."""

    pixels: np.ndarray  # (rows, columns) float32, rescaled, MONOCHROME2 sense
    frame_number: int  # 1-based
    pixel_spacing_mm: tuple[float, float] | None


def intensity_scale(image: np.ndarray) -> float:
    # A high percentile rather than the maximum, so one hot pixel of Poisson noise does not set the scale.
    scale = float(np.percentile(image, INTENSITY_PERCENTILE))
    return scale if scale > 0 else max(float(image.max()), 1.0)


def cut_box(counts: np.ndarray, box: FrameBox) -> np.ndarray:
    """The box's square of `counts`, zero where it reaches past the frame."""
    square = np.zeros((box.size, box.size), dtype=np.float32)
    r0, r1 = max(box.top, 0), min(box.top + box.size, box.rows)
    c0, c1 = max(box.left, 0), min(box.left + box.size, box.columns)
    square[r0 - box.top : r1 - box.top, c0 - box.left : c1 - box.left] = counts[r0:r1, c0:c1]
    return square


def to_network_input(images: np.ndarray) -> Tensor:
    """(N, S, S) 0..1 grey images to (N, 3, S, S) ImageNet-normalised tensors (grey replicated)."""
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if batch.ndim != 3:
        raise ValueError(f"expected (N, S, S) images, got shape {tuple(batch.shape)}")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch[:, None].expand(-1, 3, -1, -1) - mean) / std


def map_to_frame(cam_map: np.ndarray, box: FrameBox) -> np.ndarray:
    """A CAM over the network input, resized onto the box and cut to the source frame; 0..1."""
    resized = cv2.resize(cam_map.astype(np.float32), (box.size, box.size), interpolation=cv2.INTER_LINEAR)
    heatmap = np.zeros((box.rows, box.columns), dtype=np.float32)
    r0, r1 = max(box.top, 0), min(box.top + box.size, box.rows)
    c0, c1 = max(box.left, 0), min(box.left + box.size, box.columns)
    heatmap[r0:r1, c0:c1] = resized[r0 - box.top : r1 - box.top, c0 - box.left : c1 - box.left]
    heatmap = np.maximum(heatmap, 0.0)
    peak = float(heatmap.max())
    return heatmap / peak if peak > 0 else heatmap


def peak_hotspot(heatmap: np.ndarray, source_index: int, frame_number: int) -> tuple[Hotspot, ...]:
    """The heatmap's maximum as a point in DICOM image coordinates (pixel centres at +0.5); none if flat."""
    if float(heatmap.max()) <= 0:
        return ()
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (
        Hotspot(
            source_index=source_index,
            frame=frame_number,
            column=float(column) + 0.5,
            row=float(row) + 0.5,
            score=float(heatmap[row, column]),
            label="Grad-CAM peak",
        ),
    )


def read_frame(ds: Dataset) -> SourceFrame:
    """The anterior frame of an NM dataset (first frame when no view says anterior), as float counts."""
    uid = ds.get("SOPInstanceUID", "<no SOP Instance UID>")
    if "PixelData" not in ds:
        raise ImageNotUsable(f"{uid} has no pixel data")
    try:
        array = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for undecodable or unsupported pixel data
        raise ImageNotUsable(f"cannot decode the pixel data of {uid}: {exc}") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if samples > 1:
        array = array.mean(axis=-1)
    if frames == 1 and array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ImageNotUsable(f"{uid}: expected planar frames, got pixel array of shape {array.shape}")
    index = _anterior_frame(ds, array.shape[0])
    pixels = array[index].astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    spacing = ds.get("PixelSpacing")
    pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None
    return SourceFrame(pixels, index + 1, pixel_spacing)


def _anterior_frame(ds: Dataset, n_frames: int) -> int:
    """0-based index of the first frame whose detector looks from the front; 0 when none says so."""
    detectors = ds.get("DetectorInformationSequence") or []
    value = ds.get("DetectorVector")
    # pydicom gives a single value as a plain int and several as a MultiValue
    vector = [int(value)] if isinstance(value, int) else [int(v) for v in value or range(1, n_frames + 1)]
    for number, item in enumerate(detectors, start=1):
        if _is_anterior(item) and number in vector:
            index = vector.index(number)
            if index < n_frames:
                return index
    return 0


def _is_anterior(item: Dataset) -> bool:
    return any(str(code.get("CodeValue", "")) in ANTERIOR_CODES for code in item.get("ViewCodeSequence") or [])


def has_anterior_view(ds: Dataset) -> bool:
    """Whether the dataset, or one of its detectors, is coded as an anterior projection."""
    return _is_anterior(ds) or any(_is_anterior(item) for item in ds.get("DetectorInformationSequence") or [])


def anterior_source(sources: Sequence[Dataset], network: str) -> tuple[int, SourceFrame]:
    """The index and frame of the first source coded as anterior (else the first source) of a one-image job."""
    if not sources:
        raise ImageNotUsable(f"{network} needs one planar image; the job has no sources")
    index = next((i for i, ds in enumerate(sources) if has_anterior_view(ds)), 0)
    return index, read_frame(sources[index])


def classify_and_explain(
    model: nn.Module,
    x: Tensor,
    lock: threading.Lock,
    spec: ModelSpec,
    box: FrameBox,
    display: np.ndarray,
    source_index: int,
    frame_number: int,
    cam_layer: str = "layer4",
) -> Finding:
    """Softmax over `spec.labels` for one input, and the predicted class's Grad-CAM mapped onto the source frame."""
    with lock, ClassActivationMap(model, cam_layer) as cam:
        result = cam(x)
    keys = [label.key for label in spec.labels]
    probs = torch.softmax(result.logits, dim=1)[0].tolist()
    heatmap = map_to_frame(result.maps[0], box)
    return Finding(
        model=spec,
        predicted=keys[result.class_indices[0]],
        probabilities=dict(zip(keys, (float(p) for p in probs), strict=True)),
        hotspots=peak_hotspot(heatmap, source_index, frame_number),
        display_images=(display,),
        heatmaps=(heatmap,),
        source_frames=(frame_number,),
        inference_ms=result.forward_ms,
        explain_ms=result.explain_ms,
    )
