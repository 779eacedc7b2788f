"""Thyroid scintigraphy classifier of paper 002 (Zhao et al., Front. Endocrinol. 2023, doi 10.3389/fendo.2023.1224191).

Called by infer for jobs routed to "thyroid-resnet34": NM frame in, Finding out (4-class probabilities, the
Grad-CAM of the predicted class on `layer4` mapped back onto the source frame, and its peak as a hotspot)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom import Dataset
from torch import Tensor, nn

from scintnode.cam import ClassActivationMap
from scintnode.finding import Finding, Hotspot
from scintnode.models.resnet import FEATURE_WIDTH, STAGE_BLOCKS, ResNet
from scintnode.models.spec import Code, LabelSpec, ModelSpec

NAME = "thyroid-resnet34"
WEIGHTS_FORMAT = "scintnode-weights/1"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / f"{NAME}.pt"
CAM_LAYER = "layer4"

LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("graves", "Graves' disease", Code("353295004", "SCT", "Graves disease")),
    LabelSpec("normal", "Normal thyroid", Code("17621005", "SCT", "Normal")),
    LabelSpec("subacute_thyroiditis", "Subacute thyroiditis", Code("4598005", "SCT", "Subacute thyroiditis")),
    # The paper's tumour class holds benign (hot/warm) and malignant (cold) nodules, so a malignancy code
    # would overclaim; Thyroid Nodule is in DICOM CID 12322 (pydicom 3.0.2 code dictionary).
    LabelSpec("tumour", "Thyroid tumour", Code("237495005", "SCT", "Thyroid Nodule")),
)
CLASS_KEYS: tuple[str, ...] = tuple(label.key for label in LABELS)
FINDING_SITE = Code("69748006", "SCT", "Thyroid")
PROCEDURE = Code("7562007", "SCT", "Radioisotope study of endocrine system")

# Hidden widths of the two leaky-ReLU FC layers: the paper does not give them.
HIDDEN = (256, 128)
DROPOUT = 0.8
# ImageNet statistics, so a site's ImageNet-pretrained backbone sees inputs on the scale it was trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Planar neck images wider than this (e.g. no zoom) are cropped around the counts to this field of view.
FIELD_MM = 260.0
INTENSITY_PERCENTILE = 99.8
# View Code Sequence values of an anterior projection, SCT and the legacy SRT older cameras send.
ANTERIOR_CODES = frozenset({"399321004", "G-5215"})


class ImageNotUsable(ValueError):
    """The source cannot be read as a planar grey image; the message says why."""


class ThyroidResNet34(ResNet):
    """ResNet-34 whose `fc` is the paper's head: 512 -> FC + leaky ReLU + dropout 0.8 -> FC + leaky ReLU -> 4.

    Returns logits (softmax is applied by `probabilities`, and by cross-entropy in training). The
    backbone keeps torchvision's names, so `resnet.load_backbone` accepts ImageNet weights."""

    def __init__(self, hidden: tuple[int, int] = HIDDEN, dropout: float = DROPOUT) -> None:
        super().__init__(STAGE_BLOCKS["resnet34"])
        self.fc = nn.Sequential(
            nn.Linear(FEATURE_WIDTH, hidden[0]),
            nn.LeakyReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.LeakyReLU(),
            nn.Linear(hidden[1], len(LABELS)),
        )


def probabilities(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class FrameBox:
    """The square of the source frame (pixel indices, may reach past its edges) the network looked at."""

    rows: int  # source frame shape
    columns: int
    top: int
    left: int
    size: int


@dataclass(frozen=True)
class PreparedFrame:
    """A source frame made ready for the network, and what is needed to map results back onto it."""

    network_input: np.ndarray  # (S, S) float32 0..1
    display: np.ndarray  # (rows, columns) float32 0..1, the source frame as shown
    box: FrameBox


def prepare_frame(
    frame: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None,
    image_size: int,
    field_mm: float = FIELD_MM,
) -> PreparedFrame:
    """Square crop (or zero pad) of a planar count image, resized to image_size and scaled to 0..1.

    Fields of view up to `field_mm` are only padded to a square; wider ones (known from the pixel spacing)
    are cropped to `field_mm` around the count-weighted centre, where a neck image's glands are."""
    counts = np.asarray(frame, dtype=np.float32)
    if counts.ndim != 2 or min(counts.shape) < 8:
        raise ImageNotUsable(f"expected a 2-D frame of at least 8x8 pixels, got shape {counts.shape}")
    if not np.isfinite(counts).all():
        raise ImageNotUsable("frame holds NaN or infinite values")
    counts = np.clip(counts, 0.0, None)
    rows, columns = counts.shape
    size = max(rows, columns)
    centre_row, centre_column = (rows - 1) / 2.0, (columns - 1) / 2.0
    spacing = min(pixel_spacing_mm) if pixel_spacing_mm else None
    if spacing and spacing > 0 and size * spacing > field_mm:
        size = max(8, round(field_mm / spacing))
        centre_row, centre_column = _count_centre(counts)
    box = FrameBox(rows, columns, round(centre_row - (size - 1) / 2.0), round(centre_column - (size - 1) / 2.0), size)
    square = np.zeros((size, size), dtype=np.float32)
    r0, r1 = max(box.top, 0), min(box.top + size, rows)
    c0, c1 = max(box.left, 0), min(box.left + size, columns)
    square[r0 - box.top : r1 - box.top, c0 - box.left : c1 - box.left] = counts[r0:r1, c0:c1]
    interpolation = cv2.INTER_AREA if size > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (image_size, image_size), interpolation=interpolation)
    scale = _intensity_scale(resized)
    return PreparedFrame(
        network_input=np.clip(resized / scale, 0.0, 1.0).astype(np.float32),
        display=np.clip(counts / _intensity_scale(counts), 0.0, 1.0).astype(np.float32),
        box=box,
    )


def _intensity_scale(image: np.ndarray) -> float:
    # A high percentile rather than the maximum, so one hot pixel of Poisson noise does not set the scale.
    scale = float(np.percentile(image, INTENSITY_PERCENTILE))
    return scale if scale > 0 else max(float(image.max()), 1.0)


def _count_centre(counts: np.ndarray) -> tuple[float, float]:
    smooth = cv2.GaussianBlur(counts, (0, 0), sigmaX=3.0)
    weights = np.clip(smooth - np.percentile(smooth, 50.0), 0.0, None)
    total = float(weights.sum())
    if total <= 0:
        return (counts.shape[0] - 1) / 2.0, (counts.shape[1] - 1) / 2.0
    rows, columns = np.indices(counts.shape)
    return float((rows * weights).sum() / total), float((columns * weights).sum() / total)


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


@dataclass(frozen=True)
class SourceFrame:
    """The planar frame of a source dataset the network reads."""

    pixels: np.ndarray  # (rows, columns) float32, rescaled, MONOCHROME2 sense
    frame_number: int  # 1-based
    pixel_spacing_mm: tuple[float, float] | None


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


def _has_anterior_view(ds: Dataset) -> bool:
    return _is_anterior(ds) or any(_is_anterior(item) for item in ds.get("DetectorInformationSequence") or [])


def load_weights(path: Path) -> tuple[ThyroidResNet34, dict[str, Any]]:
    """The network from a weights file written by `save_weights` (fp16 on disk, float32 in memory)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"thyroid weights not found at {path}; run `scintnode train thyroid`") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a scintnode weights file (format {WEIGHTS_FORMAT})")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    if tuple(meta.get("classes", ())) != CLASS_KEYS:
        raise ValueError(f"{path} was trained for classes {meta.get('classes')}, expected {list(CLASS_KEYS)}")
    hidden = [int(width) for width in meta.get("hidden", HIDDEN)]
    if len(hidden) != 2:
        raise ValueError(f"{path} gives {len(hidden)} hidden widths; the thyroid head has 2")
    model = ThyroidResNet34(hidden=(hidden[0], hidden[1]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    model.eval()
    return model, meta


def save_weights(model: ThyroidResNet34, path: Path, meta: dict[str, Any]) -> None:
    """Write the state_dict in half precision (integer buffers unchanged) with its metadata."""
    state = {k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": WEIGHTS_FORMAT, **meta, "classes": list(CLASS_KEYS), "state_dict": state}, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ThyroidNetwork:
    """The loaded classifier; `run` is serialised by a lock so one instance can serve a job runner."""

    def __init__(self, model: ThyroidResNet34, spec: ModelSpec, image_size: int) -> None:
        self.model = model.eval()
        self.spec = spec
        self.image_size = image_size
        self._lock = threading.Lock()

    def run(self, sources: Sequence[Dataset]) -> Finding:
        """Classify the anterior view among `sources` (the first source when none is marked anterior)."""
        if not sources:
            raise ImageNotUsable("the thyroid network needs one planar image; the job has no sources")
        source_index = next((i for i, ds in enumerate(sources) if _has_anterior_view(ds)), 0)
        source = read_frame(sources[source_index])
        prepared = prepare_frame(source.pixels, source.pixel_spacing_mm, self.image_size)
        x = to_network_input(prepared.network_input[np.newaxis])
        started = time.perf_counter()
        with self._lock, ClassActivationMap(self.model, CAM_LAYER) as cam:
            result = cam(x)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        probs = probabilities(result.logits)[0].tolist()
        predicted = CLASS_KEYS[result.class_indices[0]]
        heatmap = map_to_frame(result.maps[0], prepared.box)
        return Finding(
            model=self.spec,
            predicted=predicted,
            probabilities=dict(zip(CLASS_KEYS, (float(p) for p in probs), strict=True)),
            hotspots=_peak(heatmap, source_index, source.frame_number),
            display_images=(prepared.display,),
            heatmaps=(heatmap,),
            source_frames=(source.frame_number,),
            inference_ms=elapsed_ms,
        )


def _peak(heatmap: np.ndarray, source_index: int, frame_number: int) -> tuple[Hotspot, ...]:
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


def model_spec(weights_sha256: str, version: str) -> ModelSpec:
    return ModelSpec(
        name=NAME,
        version=version,
        title="Thyroid scintigraphy classifier (ResNet-34)",
        labels=LABELS,
        finding_site=FINDING_SITE,
        procedure=PROCEDURE,
        weights_sha256=weights_sha256,
        trained_on_synthetic=True,
    )


def load_thyroid_network(weights_path: Path | None = None) -> ThyroidNetwork:
    """The network with the committed weights (scintnode/weights/thyroid-resnet34.pt) or those at `weights_path`."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    model, meta = load_weights(path)
    spec = model_spec(file_sha256(path), str(meta.get("version", "0")))
    if not meta.get("synthetic", True):
        spec = replace(spec, trained_on_synthetic=False)
    return ThyroidNetwork(model, spec, int(meta["image_size"]))
