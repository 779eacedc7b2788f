"""Residual thyroid tissue after thyroidectomy on 131I neck scans, paper 004 (Guo et al., Front. Oncol. 2021,
doi 10.3389/fonc.2021.762643): ResNet-18 whose final layer is a two-class head.

Called by infer for jobs routed to "i131-neck-resnet18": NM neck scan in (anterior frame), Finding out (2-class
probabilities, the Grad-CAM of the predicted class on `layer4` mapped back onto the source frame, its peak)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset
from torch import Tensor, nn

from scintnode.config import DEFAULT_DEVICE
from scintnode.finding import Finding
from scintnode.models.device import torch_device
from scintnode.models.i131_neck_preprocess import FIELD_MM, PreprocessSteps, preprocess
from scintnode.models.planar import anterior_source, classify_and_explain
from scintnode.models.resnet import FEATURE_WIDTH, STAGE_BLOCKS, ResNet
from scintnode.models.spec import Code, LabelSpec, ModelSpec
from scintnode.models.weights_file import file_sha256, load_float_state, save_half_precision

NAME = "i131-neck-resnet18"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / f"{NAME}.pt"
CAM_LAYER = "layer4"
# No SNOMED CT concept for "residual thyroid tissue after thyroidectomy" appears in the DICOM code tables
# (dicom-conventions.md §4.4), so both answers use local codes of the private scheme 99SCINT (PS3.16 8.2:
# designators beginning "99" are private).
LOCAL_SCHEME = "99SCINT"
LABELS: tuple[LabelSpec, ...] = (
    LabelSpec(
        "no_residual", "No residual thyroid tissue", Code("RTT-ABSENT", LOCAL_SCHEME, "No residual thyroid tissue")
    ),
    LabelSpec(
        "residual",
        "Residual thyroid tissue",
        Code("RTT-PRESENT", LOCAL_SCHEME, "Residual thyroid tissue after thyroidectomy"),
    ),
)
CLASS_KEYS: tuple[str, ...] = tuple(label.key for label in LABELS)
POSITIVE = "residual"  # the class the paper's sensitivity, specificity, precision and F1 are about
FINDING_SITE = Code("45048000", "SCT", "Neck")  # the thyroid bed; the gland itself was removed
PROCEDURE = Code("7562007", "SCT", "Radioisotope study of endocrine system")


class ResidualResNet18(ResNet):
    """ResNet-18 with `fc` replaced by the paper's two-class layer (512 -> 2); returns logits.

    Every parameter keeps torchvision's name, `fc` included, so a torchvision ResNet-18 fine-tuned to two
    classes loads whole and an ImageNet one loads through `resnet.load_backbone`."""

    def __init__(self) -> None:
        super().__init__(STAGE_BLOCKS["resnet18"])
        self.fc = nn.Linear(FEATURE_WIDTH, len(LABELS))


def probabilities(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=1)


def network_input(steps: Sequence[PreprocessSteps]) -> Tensor:
    """The standardised (3, S, S) images of several preprocessed frames as one (N, 3, S, S) batch."""
    return torch.from_numpy(np.stack([step.standardised for step in steps]))


def load_weights(path: Path) -> tuple[ResidualResNet18, dict[str, Any]]:
    """The network from a weights file written by `save_weights` (fp16 on disk, float32 in memory)."""
    state, meta = load_float_state(path, CLASS_KEYS, "scintnode train i131-neck")
    model = ResidualResNet18()
    model.load_state_dict(state)
    model.eval()
    return model, meta


def save_weights(model: ResidualResNet18, path: Path, meta: dict[str, Any]) -> None:
    save_half_precision(model, path, meta, CLASS_KEYS)


class I131NeckNetwork:
    """The loaded classifier; `run` is serialised by a lock so one instance can serve a job runner."""

    def __init__(self, model: ResidualResNet18, spec: ModelSpec, image_size: int, field_mm: float = FIELD_MM) -> None:
        self.model = model.eval()
        self.spec = spec
        self.image_size = image_size
        self.field_mm = field_mm
        self._lock = threading.Lock()

    def run(self, sources: Sequence[Dataset]) -> Finding:
        """Classify the anterior view among `sources` (the first source when none is marked anterior)."""
        index, source = anterior_source(sources, "the i131-neck network")
        steps = preprocess(source.pixels, source.pixel_spacing_mm, self.image_size, self.field_mm)
        x = network_input([steps])
        return classify_and_explain(
            self.model, x, self._lock, self.spec, steps.box, steps.display, index, source.frame_number, CAM_LAYER
        )


def model_spec(weights_sha256: str, version: str) -> ModelSpec:
    return ModelSpec(
        name=NAME,
        version=version,
        title="Residual thyroid tissue on I-131 neck scans (ResNet-18)",
        labels=LABELS,
        finding_site=FINDING_SITE,
        procedure=PROCEDURE,
        weights_sha256=weights_sha256,
        trained_on_synthetic=True,
    )


def load_i131_neck_network(weights_path: Path | None = None, device: str = DEFAULT_DEVICE) -> I131NeckNetwork:
    """The network with the committed weights (scintnode/weights/i131-neck-resnet18.pt) or those at `weights_path`,
    on the device the `inference_device` setting `device` names."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    model, meta = load_weights(path)
    model = model.to(torch_device(device))
    # weights that do not say otherwise are treated as synthetic-trained: the outputs then say so
    synthetic = bool(meta.get("synthetic", True))
    spec = replace(model_spec(file_sha256(path), str(meta.get("version", "0"))), trained_on_synthetic=synthetic)
    return I131NeckNetwork(model, spec, int(meta["image_size"]), float(meta.get("field_mm", FIELD_MM)))
