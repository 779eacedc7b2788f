"""Thyroid scintigraphy classifier of paper 002 (Zhao et al., Front. Endocrinol. 2023, doi 10.3389/fendo.2023.1224191).

Called by infer for jobs routed to "thyroid-resnet34": NM frame in, Finding out (4-class probabilities, the
Grad-CAM of the predicted class on `layer4` mapped back onto the source frame, and its peak as a hotspot)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom import Dataset
from torch import Tensor, nn

from scintnode.config import DEFAULT_DEVICE
from scintnode.finding import Finding
from scintnode.models.device import torch_device
from scintnode.models.planar import INTENSITY_PERCENTILE as INTENSITY_PERCENTILE
from scintnode.models.planar import FrameBox, anterior_source, classify_and_explain, cut_box, intensity_scale
from scintnode.models.planar import ImageNotUsable as ImageNotUsable
from scintnode.models.planar import map_to_frame as map_to_frame
from scintnode.models.planar import read_frame as read_frame
from scintnode.models.planar import to_network_input as to_network_input
from scintnode.models.resnet import FEATURE_WIDTH, STAGE_BLOCKS, ResNet
from scintnode.models.spec import Code, LabelSpec, ModelSpec
from scintnode.models.weights_file import file_sha256 as file_sha256
from scintnode.models.weights_file import load_float_state, save_half_precision

NAME = "thyroid-resnet34"
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
# Planar neck images wider than this (e.g. no zoom) are cropped around the counts to this field of view.
FIELD_MM = 260.0


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
    square = cut_box(counts, box)
    interpolation = cv2.INTER_AREA if size > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (image_size, image_size), interpolation=interpolation)
    scale = intensity_scale(resized)
    return PreparedFrame(
        network_input=np.clip(resized / scale, 0.0, 1.0).astype(np.float32),
        display=np.clip(counts / intensity_scale(counts), 0.0, 1.0).astype(np.float32),
        box=box,
    )


def _count_centre(counts: np.ndarray) -> tuple[float, float]:
    smooth = cv2.GaussianBlur(counts, (0, 0), sigmaX=3.0)
    weights = np.clip(smooth - np.percentile(smooth, 50.0), 0.0, None)
    total = float(weights.sum())
    if total <= 0:
        return (counts.shape[0] - 1) / 2.0, (counts.shape[1] - 1) / 2.0
    rows, columns = np.indices(counts.shape)
    return float((rows * weights).sum() / total), float((columns * weights).sum() / total)


def load_weights(path: Path) -> tuple[ThyroidResNet34, dict[str, Any]]:
    """The network from a weights file written by `save_weights` (fp16 on disk, float32 in memory)."""
    state, meta = load_float_state(path, CLASS_KEYS, "scintnode train thyroid")
    hidden = [int(width) for width in meta.get("hidden", HIDDEN)]
    if len(hidden) != 2:
        raise ValueError(f"{path} gives {len(hidden)} hidden widths; the thyroid head has 2")
    model = ThyroidResNet34(hidden=(hidden[0], hidden[1]))
    model.load_state_dict(state)
    model.eval()
    return model, meta


def save_weights(model: ThyroidResNet34, path: Path, meta: dict[str, Any]) -> None:
    """Write the state_dict in half precision (integer buffers unchanged) with its metadata."""
    save_half_precision(model, path, meta, CLASS_KEYS)


class ThyroidNetwork:
    """The loaded classifier; `run` is serialised by a lock so one instance can serve a job runner."""

    def __init__(self, model: ThyroidResNet34, spec: ModelSpec, image_size: int) -> None:
        self.model = model.eval()
        self.spec = spec
        self.image_size = image_size
        self._lock = threading.Lock()

    def run(self, sources: Sequence[Dataset]) -> Finding:
        """Classify the anterior view among `sources` (the first source when none is marked anterior)."""
        index, source = anterior_source(sources, "the thyroid network")
        prepared = prepare_frame(source.pixels, source.pixel_spacing_mm, self.image_size)
        x = to_network_input(prepared.network_input[np.newaxis])
        return classify_and_explain(
            self.model, x, self._lock, self.spec, prepared.box, prepared.display, index, source.frame_number, CAM_LAYER
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


def load_thyroid_network(weights_path: Path | None = None, device: str = DEFAULT_DEVICE) -> ThyroidNetwork:
    """The network with the committed weights (scintnode/weights/thyroid-resnet34.pt) or those at `weights_path`,
    on the device the `inference_device` setting `device` names."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    model, meta = load_weights(path)
    model = model.to(torch_device(device))
    spec = model_spec(file_sha256(path), str(meta.get("version", "0")))
    if not meta.get("synthetic", True):
        spec = replace(spec, trained_on_synthetic=False)
    return ThyroidNetwork(model, spec, int(meta["image_size"]))
