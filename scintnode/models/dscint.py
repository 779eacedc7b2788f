"""Dscint, the whole-body scintigraphy classifier of paper 003 (Lin et al., Med. Phys. 2021, doi 10.1002/mp.15196).

Called by infer for jobs routed to "dscint": anterior and posterior whole-body views in (one 2-frame object,
two objects, or one view mirrored to stand in for the other), Finding out (normal / metastasis / arthritis /
thyroid carcinoma, the Grad-CAM of the predicted class on each view and its hottest point)."""

from __future__ import annotations

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

from scintnode.config import DEFAULT_DEVICE
from scintnode.finding import Finding, Hotspot, Panel
from scintnode.models.device import finish_queued_work, model_device, torch_device
from scintnode.models.nm_input import ImageNotUsable, PlanarFrame, pick_views, read_planar_frames
from scintnode.models.spec import Code, LabelSpec, ModelSpec
from scintnode.models.thyroid import file_sha256

NAME = "dscint"
WEIGHTS_FORMAT = "scintnode-weights/1"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / f"{NAME}.pt"
CAM_LAYER = "relu5"

LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("normal", "Normal", Code("17621005", "SCT", "Normal")),
    LabelSpec("metastasis", "Bone metastasis", Code("94222008", "SCT", "Secondary malignant neoplasm of bone")),
    # Not in a DICOM CID (dicom-conventions.md §1.2 marks it to verify); the SNOMED CT concept for arthritis.
    LabelSpec("arthritis", "Arthritis", Code("3723001", "SCT", "Arthritis")),
    LabelSpec(
        "thyroid_carcinoma", "Thyroid carcinoma", Code("448216007", "SCT", "Malignant epithelial neoplasm of thyroid")
    ),
)
CLASS_KEYS: tuple[str, ...] = tuple(label.key for label in LABELS)
FINDING_SITE = Code("38266002", "SCT", "Entire body")
PROCEDURE = Code("229033006", "SCT", "Radioisotope scan of total body")
VIEWS: tuple[str, str] = ("anterior", "posterior")

# Paper 003 §2.1: 256 x 1024 matrices (eq. 1: 1024 rows of 256), the body upright, head at the top.
INPUT_SHAPE: tuple[int, int] = (1024, 256)
# Not given by the paper: CBAM's reduction 16 would leave one hidden unit for 16 channels, so 4; CBAM's 7x7.
ATTENTION_REDUCTION = 4
ATTENTION_KERNEL = 7
# Not given by the paper either: AlexNet's dropout before each of its two 4096-wide FC layers, here 1024.
DROPOUT = 0.5
# A high percentile rather than the maximum: the bladder or an injection site must not set the scale.
INTENSITY_PERCENTILE = 99.5


class ChannelAttention(nn.Module):
    """Eq. 3: sigma(MLP(AvgPool(F)) + MLP(MaxPool(F))), a shared two-layer MLP; returns (N, C, 1, 1) weights."""

    def __init__(self, channels: int, reduction: int = ATTENTION_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        average = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        maximum = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(average + maximum)


class SpatialAttention(nn.Module):
    """Eq. 4: sigma(f^kxk([AvgPool(F); MaxPool(F)])), pooling across channels; returns (N, 1, H, W) weights."""

    def __init__(self, kernel: int = ATTENTION_KERNEL) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class HybridAttention(nn.Module):
    """Eq. 2: channel attention, then spatial attention on the channel-refined map (CBAM, Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int = ATTENTION_REDUCTION, kernel: int = ATTENTION_KERNEL) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel)

    def forward(self, x: Tensor) -> Tensor:
        refined = self.channel(x) * x
        out: Tensor = self.spatial(refined) * refined
        return out


def flat_features(input_shape: tuple[int, int] = INPUT_SHAPE) -> int:
    """Width of the first FC layer's input: 24 channels on the grid left after the last pooling."""
    rows, columns = input_shape
    for kernel, stride, padding in ((11, 4, 2), (3, 2, 0), (3, 2, 0), (3, 1, 0)):  # conv1, pool1, pool2, pool3
        rows = (rows + 2 * padding - kernel) // stride + 1
        columns = (columns + 2 * padding - kernel) // stride + 1
    return 24 * rows * columns


class Dscint(nn.Module):
    """Table 4 of paper 003, one grey channel in, 4 logits out (softmax by `probabilities` and the loss).

    ReLU follows every convolution (after its BatchNorm where there is one) and both FC layers; the
    table lists none, as AlexNet-style tables usually do not."""

    def __init__(self, input_shape: tuple[int, int] = INPUT_SHAPE, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.conv1 = nn.Conv2d(1, 16, kernel_size=11, stride=4, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.attention = HybridAttention(16)
        self.conv2 = nn.Conv2d(16, 16, kernel_size=5, stride=1, padding=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv3 = nn.Conv2d(16, 24, kernel_size=3, stride=1, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(24, 24, kernel_size=3, stride=1, padding=1)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(24, 24, kernel_size=3, stride=1, padding=1)
        self.bn5 = nn.BatchNorm2d(24)
        self.relu5 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(kernel_size=3, stride=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(flat_features(input_shape), 1024),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, len(LABELS)),
        )

    def last_activation(self, x: Tensor) -> Tensor:
        """The output of relu5 (CAM_LAYER), before the last pooling: what Grad-CAM weighs."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.attention(x)
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu4(self.conv4(self.relu3(self.conv3(x))))
        out: Tensor = self.relu5(self.bn5(self.conv5(x)))
        return out

    def features(self, x: Tensor) -> Tensor:
        out: Tensor = self.pool3(self.last_activation(x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return out

    def forward_for_cam(self, x: Tensor) -> CamForward:
        """`forward`, keeping what `HeadGradCam` needs: relu5's output and both hidden FC layers' outputs."""
        activation = self.last_activation(x)
        flat = torch.flatten(self.pool3(activation), 1)
        layers = self.classifier
        first_hidden = layers[2](layers[1](layers[0](flat)))  # dropout (identity in eval), FC, ReLU
        second_hidden = layers[5](layers[4](layers[3](first_hidden)))
        return CamForward(layers[6](second_hidden), activation, first_hidden, second_hidden)


@dataclass(frozen=True)
class CamForward:
    """One forward pass of Dscint with the activations its Grad-CAM is computed from."""

    logits: Tensor  # (N, classes)
    activation: Tensor  # relu5's output (N, 24, h, w)
    first_hidden: Tensor  # (N, 1024), after its ReLU
    second_hidden: Tensor  # (N, 1024), after its ReLU


class HeadGradCam:
    """Grad-CAM on relu5 (the mean gradient of a class logit over each channel's positions, weighing that
    channel) from the forward pass alone, equal to back-propagation's to float rounding.

    Between relu5 and the logits lie a max-pooling, which hands each pooled position's gradient to exactly one
    input position, and FC layers with ReLUs. So a channel's summed gradient is the gradient reaching the
    flattened pooled features, summed over that channel's positions: u @ S, with u the gradient reaching the
    first FC layer's output and S its weight matrix summed over each channel's columns (1024 x 24, made
    once). Back-propagation computes u @ W1 in full instead: W1 is 19,032 x 1,024, 78 MB read for every job
    (4.6 ms of a 34 ms job on the development machine)."""

    def __init__(self, model: Dscint) -> None:
        first, second, last = (_linear(model.classifier[index]) for index in (1, 4, 6))
        channels = model.conv5.out_channels
        self._channel_sums = first.weight.detach().reshape(first.out_features, channels, -1).sum(dim=2)
        self._second = second.weight.detach()
        self._last = last.weight.detach()

    def channel_weights(self, forward: CamForward, class_index: int) -> Tensor:
        """(N, channels): the mean over relu5's positions of d logit[class_index] / d relu5, per channel."""
        upstream = self._last[class_index] * (forward.second_hidden > 0)  # d logit / d second FC output
        upstream = (upstream @ self._second) * (forward.first_hidden > 0)  # d logit / d first FC output
        positions = forward.activation.shape[2] * forward.activation.shape[3]
        weights: Tensor = (upstream @ self._channel_sums) / positions
        return weights

    def maps(self, forward: CamForward, class_index: int) -> np.ndarray:
        """(N, h, w) Grad-CAM maps of `class_index` over relu5's grid, >= 0, not normalised."""
        weights = self.channel_weights(forward, class_index)
        return torch.relu((weights[:, :, None, None] * forward.activation).sum(dim=1)).float().cpu().numpy()


def probabilities(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=1)


def scale_counts(counts: np.ndarray) -> np.ndarray:
    """Counts to 0..1 by the image's INTENSITY_PERCENTILE (hotter pixels saturate)."""
    scale = high_percentile(counts, INTENSITY_PERCENTILE)
    if scale <= 0:
        scale = max(float(counts.max()), 1.0)
    return np.clip(counts / scale, 0.0, 1.0).astype(np.float32)


def high_percentile(values: np.ndarray, q: float) -> float:
    """`np.percentile(values, q)` (its linear method) with one partition instead of np.percentile's 2.6 ms on a
    1024x256 view, paid four times a job: the upper order statistic by partition, the lower one as the
    largest value below it."""
    flat = np.asarray(values).ravel()
    position = q / 100.0 * (flat.size - 1)
    low = int(position)
    high = min(low + 1, flat.size - 1)
    ordered = np.partition(flat, high)
    upper = float(ordered[high])
    lower = float(ordered[:high].max()) if high > low else upper
    fraction = position - low
    # numpy's lerp: from the nearer end, so q = 100 gives the maximum exactly
    return lower + (upper - lower) * fraction if fraction < 0.5 else upper - (upper - lower) * (1.0 - fraction)


def network_image(upright_counts: np.ndarray, input_shape: tuple[int, int] = INPUT_SHAPE) -> np.ndarray:
    """An upright whole-body frame (any matrix) resized to the network's rows x columns and scaled to 0..1."""
    counts = np.clip(np.asarray(upright_counts, dtype=np.float32), 0.0, None)
    if counts.shape != input_shape:
        shrinking = counts.shape[0] > input_shape[0]
        counts = cv2.resize(
            counts, (input_shape[1], input_shape[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return scale_counts(counts)


def to_network_input(images: np.ndarray) -> Tensor:
    """(N, rows, columns) 0..1 images to the (N, 1, rows, columns) float tensor the network takes."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 3:
        raise ValueError(f"expected (N, rows, columns) images, got shape {batch.shape}")
    return torch.from_numpy(np.ascontiguousarray(batch))[:, None]


def load_weights(path: Path) -> tuple[Dscint, dict[str, Any]]:
    """The network from a weights file written by `save_weights` (fp16 on disk, float32 in memory)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"Dscint weights not found at {path}; run `scintnode train bone`") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT or payload.get("network") != NAME:
        raise ValueError(f"{path} is not a scintnode {NAME} weights file (format {WEIGHTS_FORMAT})")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    if tuple(meta.get("classes", ())) != CLASS_KEYS:
        raise ValueError(f"{path} was trained for classes {meta.get('classes')}, expected {list(CLASS_KEYS)}")
    rows, columns = (int(v) for v in meta.get("input_shape", INPUT_SHAPE))
    model = Dscint(input_shape=(rows, columns))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    return model.eval(), meta


def save_weights(model: Dscint, path: Path, meta: dict[str, Any]) -> None:
    """The state_dict in half precision (integer buffers unchanged) with its metadata."""
    state = {k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": WEIGHTS_FORMAT, **meta, "network": NAME, "classes": list(CLASS_KEYS)}
    torch.save({**payload, "input_shape": list(model.input_shape), "state_dict": state}, path)


def _linear(layer: nn.Module) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"HeadGradCam needs Dscint's classifier (FC, ReLU, FC, ReLU, FC); found {layer}")
    return layer


@dataclass(frozen=True)
class ViewPass:
    """One image the network sees: a real view, or the other view's mirror standing in for a missing one."""

    view: str
    frame: PlanarFrame
    mirrored: bool
    image: np.ndarray  # network input (rows, columns) 0..1


def view_passes(
    sources: Sequence[Dataset], input_shape: tuple[int, int] = INPUT_SHAPE, hints: Sequence[str] = ()
) -> list[ViewPass]:
    """Anterior and posterior of the job; a missing one is the present one mirrored (paper 003 §2.2.1).

    ``hints`` (an episode's slot names, per source) name the view of a single-frame source that says none."""
    if not sources:
        raise ImageNotUsable("Dscint needs whole-body anterior and/or posterior views; the job has no sources")
    frames = [frame for index, ds in enumerate(sources) for frame in read_planar_frames(ds, index)]
    frames = [
        replace(f, view=hints[f.source_index], view_from="episode slot")
        if f.view is None and f.source_index < len(hints) and hints[f.source_index] in VIEWS
        else f
        for f in frames
    ]
    chosen = pick_views(frames, VIEWS)
    if not chosen:
        seen = ", ".join(f"frame {f.frame_number} of source {f.source_index}: {f.view}" for f in frames)
        raise ImageNotUsable(f"Dscint needs an anterior or posterior whole-body view; found {seen}")
    passes = [
        ViewPass(view, frame, False, network_image(frame.upright.apply(frame.pixels), input_shape))
        for view, frame in sorted(chosen.items(), key=lambda item: VIEWS.index(item[0]))
    ]
    if len(passes) == 1:
        only = passes[0]
        other = VIEWS[1 - VIEWS.index(only.view)]
        passes.append(ViewPass(other, only.frame, True, np.ascontiguousarray(only.image[:, ::-1])))
    return passes


class DscintNetwork:
    """The loaded classifier; `run` is serialised by a lock so one instance can serve a job runner."""

    def __init__(self, model: Dscint, spec: ModelSpec) -> None:
        self.model = model.eval()
        self.spec = spec
        self._grad_cam = HeadGradCam(self.model)  # made from the weights now: they must not change after
        self._lock = threading.Lock()

    def run(self, sources: Sequence[Dataset]) -> Finding:
        """Classify a whole-body study: the mean of the softmax over its two views (one may be mirrored)."""
        return self.run_episode((), sources)

    def run_episode(self, slots: Sequence[str], sources: Sequence[Dataset]) -> Finding:
        """As `run`, for single-view objects an episode paired; its slot names are views ("anterior", ...)."""
        passes = view_passes(sources, self.model.input_shape, slots)
        device = model_device(self.model)
        x = to_network_input(np.stack([p.image for p in passes])).to(device)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            forward = self.model.forward_for_cam(x)
            finish_queued_work(device)
            forward_ms = (time.perf_counter() - started) * 1000.0
            probs = probabilities(forward.logits).mean(dim=0)
            predicted_index = int(probs.argmax())
            started = time.perf_counter()
            cam_maps = self._grad_cam.maps(forward, predicted_index)
            explain_ms = (time.perf_counter() - started) * 1000.0
        real = [(p, cam_map) for p, cam_map in zip(passes, cam_maps, strict=True) if not p.mirrored]
        heatmaps = [_to_frame(cam_map, p.frame) for p, cam_map in real]
        peak = max(float(h.max()) for h in heatmaps)
        heatmaps = [h / peak if peak > 0 else h for h in heatmaps]
        panels = tuple(
            Panel(p.frame.source_index, p.frame.frame_number, _display(p), heat, _caption(p, passes))
            for (p, _), heat in zip(real, heatmaps, strict=True)
        )
        return Finding(
            model=self.spec,
            predicted=CLASS_KEYS[predicted_index],
            probabilities=dict(zip(CLASS_KEYS, (float(v) for v in probs.tolist()), strict=True)),
            hotspots=_hottest(panels),
            display_images=tuple(_first_panel(panels, i, sources[i]).display for i in range(len(sources))),
            heatmaps=tuple(_first_panel(panels, i, sources[i]).heatmap for i in range(len(sources))),
            source_frames=tuple(_first_panel(panels, i, sources[i]).frame for i in range(len(sources))),
            inference_ms=forward_ms,
            explain_ms=explain_ms,
            panels=panels,
        )


def _upright_shape(frame: PlanarFrame) -> tuple[int, int]:
    rows, columns = frame.pixels.shape
    return (columns, rows) if frame.upright.transpose else (rows, columns)


def _display(view_pass: ViewPass) -> np.ndarray:
    """A real view as the SC shows it: `scale_counts` of its stored frame. When the network took the view at its
    own size and no count is negative, its input is exactly that, upright (the clipping at 0 before it changes
    nothing, and the percentile does not depend on the pixels' order), so it is turned back instead of scaled
    a second time."""
    frame = view_pass.frame
    if _upright_shape(frame) == view_pass.image.shape and float(frame.pixels.min()) >= 0.0:
        return frame.upright.invert(view_pass.image)
    return scale_counts(frame.pixels)


def _to_frame(cam_map: np.ndarray, frame: PlanarFrame) -> np.ndarray:
    """A CAM over the upright network input onto the stored frame's grid, >= 0, not normalised."""
    upright_rows, upright_columns = _upright_shape(frame)
    resized = cv2.resize(cam_map.astype(np.float32), (upright_columns, upright_rows), interpolation=cv2.INTER_LINEAR)
    return np.asarray(np.maximum(frame.upright.invert(resized), 0.0), dtype=np.float32)


def _caption(view_pass: ViewPass, passes: Sequence[ViewPass]) -> str:
    caption = view_pass.view.capitalize()
    if any(p.mirrored for p in passes):
        missing = next(p.view for p in passes if p.mirrored)
        caption += f" ({missing} missing: mirrored for the network)"
    return caption


def _first_panel(panels: Sequence[Panel], source_index: int, source: Dataset) -> Panel:
    """The first panel of a source; a source the network did not use shows its first frame, no heat."""
    for panel in panels:
        if panel.source_index == source_index:
            return panel
    display = scale_counts(read_planar_frames(source, source_index)[0].pixels)
    return Panel(source_index, 1, display, np.zeros_like(display), "not used")


def _hottest(panels: Sequence[Panel]) -> tuple[Hotspot, ...]:
    """The heatmap maximum over all views, as a point in DICOM image coordinates (pixel centres at +0.5)."""
    best = max(panels, key=lambda p: float(p.heatmap.max()))
    if float(best.heatmap.max()) <= 0:
        return ()
    row, column = np.unravel_index(int(np.argmax(best.heatmap)), best.heatmap.shape)
    return (
        Hotspot(
            source_index=best.source_index,
            frame=best.frame,
            column=float(column) + 0.5,
            row=float(row) + 0.5,
            score=float(best.heatmap[row, column]),
            label=f"Grad-CAM peak ({best.caption.split(' ')[0].lower()})",
        ),
    )


def model_spec(weights_sha256: str, version: str) -> ModelSpec:
    return ModelSpec(
        name=NAME,
        version=version,
        title="Whole-body scintigraphy classifier (Dscint)",
        labels=LABELS,
        finding_site=FINDING_SITE,
        procedure=PROCEDURE,
        weights_sha256=weights_sha256,
        trained_on_synthetic=True,
    )


def load_dscint_network(weights_path: Path | None = None, device: str = DEFAULT_DEVICE) -> DscintNetwork:
    """The network with the committed weights (scintnode/weights/dscint.pt) or those at `weights_path`, on the
    device the `inference_device` setting `device` names."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    model, meta = load_weights(path)
    model = model.to(torch_device(device))
    spec = model_spec(file_sha256(path), str(meta.get("version", "0")))
    if not meta.get("synthetic", True):
        spec = replace(spec, trained_on_synthetic=False)
    return DscintNetwork(model, spec)
