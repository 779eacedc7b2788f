"""ParaNet (paper 000, Apostolopoulos et al.): three VGG19 paths for the early MIBI, late MIBI and pertechnetate
thyroid images, global average pooling, concatenation, dense 750, dropout 0.5, dense 256, dense 2.

Called by infer for episode jobs routed to "paranet-small" (or "paranet"): the episode's slots in, a Finding
out (normal/abnormal probabilities, a Grad-CAM heatmap per image, candidate glands with their site)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset
from torch import Tensor, nn

from scintnode.cam import ClassActivationMap, Method, to_grid
from scintnode.config import DEFAULT_DEVICE
from scintnode.finding import Finding, Hotspot
from scintnode.models import paranet_glands as glands
from scintnode.models.device import torch_device
from scintnode.models.nm_input import Upright
from scintnode.models.paranet_input import (
    FIELD_MM,
    IDENTITY,
    PreparedImage,
    prepare_source,
    register_prepared,
    standardise,
    warp_map,
    warp_point,
)
from scintnode.models.planar import map_to_frame
from scintnode.models.spec import Code, LabelSpec, ModelSpec
from scintnode.models.vgg import VGG19_WIDTHS, last_conv_index, vgg_features
from scintnode.models.weights_file import file_sha256, load_float_state, save_half_precision

PATHS: tuple[str, ...] = ("early", "late", "thyroid")  # the episode's slot names, in input-channel order
REQUIRED_PATHS = ("early", "late")
HIDDEN = (750, 256)
DROPOUT = 0.5
ABNORMAL = 1  # index of the abnormal class: every Grad-CAM explains it, whatever was predicted
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("normal", "Normal", Code("17621005", "SCT", "Normal")),
    LabelSpec("abnormal", "Abnormal (parathyroid)", Code("263654008", "SCT", "Abnormal")),
)
CLASS_KEYS: tuple[str, ...] = tuple(label.key for label in LABELS)
FINDING_SITE = Code("111002", "SCT", "Parathyroid")
PROCEDURE = Code("7562007", "SCT", "Radioisotope study of endocrine system")


@dataclass(frozen=True)
class Variant:
    """A named ParaNet size: the same stages and head, different channel widths and input side."""

    name: str
    widths: tuple[int, ...]  # channels of the five VGG19 stages
    image_size: int
    title: str
    batch_norm: bool = False
    cam_stage: int = 5  # the stage whose last convolution Grad-CAM explains


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("paranet", VGG19_WIDTHS, 350, "Parathyroid scintigraphy classifier (ParaNet, 3x VGG19)"),
        # 1/16 of VGG19's channels at 64 px, with batch norm (vgg19_bn layout) so that it learns in the few
        # steps one CPU core allows. Grad-CAM on stage 4 (8x8), since stage 5's 4x4 marks only a quarter of
        # the field; the late image's uptake places the gland inside the marked region (model card).
        Variant(
            "paranet-small", (4, 8, 16, 32, 32), 64, "Parathyroid scintigraphy classifier (ParaNet-small)", True, 4
        ),
    )
}


def find_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown ParaNet variant {name!r}; known: {', '.join(VARIANTS)}") from None


class VGGPath(nn.Module):
    """One path: VGG19's convolutions on a grey image, without the fifth max-pool (350 px in, 21x21 out)."""

    def __init__(self, widths: Sequence[int] = VGG19_WIDTHS, batch_norm: bool = False) -> None:
        super().__init__()
        self.features = vgg_features(widths, in_channels=1, last_pool=False, batch_norm=batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.features(x)
        return out


class ParaNet(nn.Module):
    """Input (N, 3, S, S): early, late and thyroid images as channels; output (N, 2) logits (normal, abnormal)."""

    def __init__(
        self,
        widths: Sequence[int] = VGG19_WIDTHS,
        hidden: tuple[int, int] = HIDDEN,
        dropout: float = DROPOUT,
        batch_norm: bool = False,
        cam_stage: int = 5,
    ):
        super().__init__()
        self.widths = tuple(widths)
        self.batch_norm = batch_norm
        self.cam_stage = cam_stage
        self.paths = nn.ModuleDict({name: VGGPath(widths, batch_norm) for name in PATHS})
        self.head = nn.Sequential(
            nn.Linear(len(PATHS) * self.widths[-1], hidden[0]),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], len(LABELS)),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != len(PATHS):
            raise ValueError(f"ParaNet takes (N, {len(PATHS)}, S, S) inputs, got shape {tuple(x.shape)}")
        pooled = [self.paths[name](x[:, i : i + 1]).mean(dim=(2, 3)) for i, name in enumerate(PATHS)]
        out: Tensor = self.head(torch.cat(pooled, dim=1))
        return out

    def cam_layer(self, path: str) -> str:
        """The module name of the ReLU after the last convolution of `path`'s CAM stage, for Grad-CAM."""
        features = self.paths[path].features
        assert isinstance(features, nn.Sequential)
        return f"paths.{path}.features.{last_conv_index(features, self.cam_stage)}"


def build(variant: str) -> ParaNet:
    chosen = find_variant(variant)
    return ParaNet(chosen.widths, batch_norm=chosen.batch_norm, cam_stage=chosen.cam_stage)


def probabilities(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=1)


def network_input(images: np.ndarray) -> Tensor:
    """(N, 3, S, S) prepared images (zeros for a missing thyroid scan) to the standardised network input."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] != len(PATHS):
        raise ValueError(f"expected (N, {len(PATHS)}, S, S) images, got shape {array.shape}")
    return torch.from_numpy(standardise(array))


def save_weights(model: ParaNet, variant: str, image_size: int, path: Path, meta: dict[str, Any]) -> None:
    """Half-precision weights with what loading needs: variant, widths, batch norm, the input side trained at."""
    chosen = find_variant(variant)
    save_half_precision(
        model,
        path,
        {
            "variant": chosen.name,
            "widths": list(model.widths),
            "batch_norm": model.batch_norm,
            "cam_stage": model.cam_stage,
            "image_size": image_size,
            **meta,
        },
        CLASS_KEYS,
    )


def load_weights(path: Path) -> tuple[ParaNet, dict[str, Any]]:
    """The network from a weights file written by `save_weights` (fp16 on disk, float32 in memory)."""
    state, meta = load_float_state(path, CLASS_KEYS, "scintnode train parathyroid")
    model = ParaNet(
        [int(w) for w in meta.get("widths", VGG19_WIDTHS)],
        batch_norm=bool(meta.get("batch_norm", False)),
        cam_stage=int(meta.get("cam_stage", 5)),
    )
    model.load_state_dict(state)
    return model.eval(), meta


def model_spec(name: str, weights_sha256: str, version: str, synthetic: bool) -> ModelSpec:
    return ModelSpec(
        name=name,
        version=version,
        title=find_variant(name).title,
        labels=LABELS,
        finding_site=FINDING_SITE,
        procedure=PROCEDURE,
        weights_sha256=weights_sha256,
        trained_on_synthetic=synthetic,
    )


@dataclass(frozen=True)
class Explained:
    """One episode through the network: probabilities, a Grad-CAM per path used, the candidates."""

    probabilities: np.ndarray  # (2,)
    maps: dict[str, np.ndarray]  # path -> CAM at the path's last convolution grid
    candidates: list[glands.Candidate]  # in network-input pixels, strongest first; [] unless abnormal
    forward_ms: float  # the network's one forward pass
    explain_ms: float  # Grad-CAM of every path used


def explain(
    model: ParaNet, images: np.ndarray, present: Sequence[str], mm_per_pixel: float, method: Method
) -> Explained:
    """Run ParaNet once on one (3, S, S) input and explain the abnormal class on each path in `present`."""
    x = network_input(images[np.newaxis])
    layers = {path: model.cam_layer(path) for path in present}
    with ClassActivationMap(model, list(layers.values()), method) as cam:
        result = cam(x, class_index=ABNORMAL)
    maps = {path: result.layer_maps[layer][0] for path, layer in layers.items()}
    probs = probabilities(result.logits)[0].numpy()
    candidates: list[glands.Candidate] = []
    if int(np.argmax(probs)) == ABNORMAL:
        candidates = glands.find_candidates(maps["late"], images[1], images[0], mm_per_pixel)
    return Explained(probs, maps, candidates, result.forward_ms, result.explain_ms)


class ParaNetNetwork:
    """The loaded ParaNet; `run_episode` is serialised by a lock so one instance can serve the job runner."""

    def __init__(self, model: ParaNet, spec: ModelSpec, image_size: int, method: Method = "gradcam") -> None:
        self.model = model.eval()
        self.spec = spec
        self.image_size = image_size
        self.method: Method = method
        self._lock = threading.Lock()

    def run(self, sources: Sequence[Dataset]) -> Finding:
        raise ValueError(
            f"{self.spec.name} needs an episode (early and late MIBI images, optionally a pertechnetate thyroid "
            "image, by slot name); route it with a rule that has an `episode:` block (rules/parathyroid.yaml)"
        )

    def run_episode(self, slots: Sequence[str], sources: Sequence[Dataset]) -> Finding:
        index = _slot_index(slots, sources)
        size = self.image_size
        prepared: dict[str, PreparedImage] = {"early": prepare_source(sources[index["early"]], index["early"], size)}
        early = prepared["early"]
        # Cut like the early image when on the same grid (same session; prepare_counts crops it anew otherwise),
        # then registered onto it: the patient lay down again for the late image.
        late = prepare_source(sources[index["late"]], index["late"], size, box=early.box)
        prepared["late"] = register_prepared(early, late)
        if "thyroid" in index:
            prepared["thyroid"] = prepare_source(sources[index["thyroid"]], index["thyroid"], size)
        # A missing thyroid scan is an all-zero image on its path, as in training (model card).
        images = np.stack(
            [prepared[p].network_input if p in prepared else np.zeros((size, size), np.float32) for p in PATHS]
        )
        spacing = early.frame.pixel_spacing_mm
        mm_per_pixel = (min(spacing) if spacing else FIELD_MM / early.box.size) * early.box.size / size
        with self._lock:
            result = explain(self.model, images, list(prepared), mm_per_pixel, self.method)
        order = sorted(prepared, key=lambda p: index[p])  # the Finding's per-source tuples follow source order
        heatmaps = {
            p: _on_stored_grid(
                map_to_frame(_own_grid(result.maps[p], prepared[p], size), prepared[p].box), prepared[p].frame.upright
            )
            for p in prepared
        }
        displays = {p: _on_stored_grid(prepared[p].display, prepared[p].frame.upright) for p in prepared}
        pairs = [
            (_hotspot(c, prepared["early"], size, "early"), _hotspot(c, prepared["late"], size, "late"))
            for c in result.candidates
        ]
        # A peak in the padding around a small field of view is not on the patient: no point to report there.
        hotspots = tuple(h for pair in pairs if all(_inside(h, sources[h.source_index]) for h in pair) for h in pair)
        return Finding(
            model=self.spec,
            predicted=CLASS_KEYS[int(np.argmax(result.probabilities))],
            probabilities={k: float(p) for k, p in zip(CLASS_KEYS, result.probabilities, strict=True)},
            hotspots=hotspots,
            display_images=tuple(displays[p] for p in order),
            heatmaps=tuple(heatmaps[p] for p in order),
            source_frames=tuple(prepared[p].frame.frame_number for p in order),
            inference_ms=result.forward_ms,
            explain_ms=result.explain_ms,
        )


def _slot_index(slots: Sequence[str], sources: Sequence[Dataset]) -> dict[str, int]:
    if len(slots) != len(sources):
        raise ValueError(f"{len(slots)} slot name(s) for {len(sources)} source(s)")
    unknown = sorted(set(slots) - set(PATHS))
    if unknown:
        raise ValueError(f"ParaNet knows the slots {', '.join(PATHS)}; got {', '.join(unknown)}")
    index: dict[str, int] = {}
    for position, slot in enumerate(slots):
        if slot in index:
            raise ValueError(f"slot {slot!r} holds more than one image; ParaNet reads one image per slot")
        index[slot] = position
    missing = [p for p in REQUIRED_PATHS if p not in index]
    if missing:
        raise ValueError(f"ParaNet needs the {' and '.join(missing)} MIBI image(s); the episode has {list(slots)}")
    return index


def _on_stored_grid(image: np.ndarray, upright: Upright) -> np.ndarray:
    return upright.invert(image).astype(np.float32)


def _inside(hotspot: Hotspot, source: Dataset) -> bool:
    return 0.0 <= hotspot.column <= int(source.Columns) and 0.0 <= hotspot.row <= int(source.Rows)


def _own_grid(cam_map: np.ndarray, image: PreparedImage, size: int) -> np.ndarray:
    """A path's map over the early image's network-input pixels, carried onto `image`'s own (the late image was
    registered onto the early one before the network saw it)."""
    if np.array_equal(image.warp, IDENTITY):
        return cam_map
    return warp_map(to_grid(cam_map, size, size), image.warp)


def _hotspot(candidate: glands.Candidate, image: PreparedImage, size: int, phase: str) -> Hotspot:
    """A candidate (the early image's network-input pixels) as a point on `image`'s stored frame, with its site."""
    box, scale = image.box, image.box.size / size
    own_column, own_row = warp_point(image.warp, candidate.column, candidate.row)
    column = box.left + own_column * scale  # upright frame, DICOM coordinates (+0.5 centres kept)
    row = box.top + own_row * scale
    if image.frame.upright.flip_vertical:
        row = box.rows - row
    if image.frame.upright.transpose:
        column, row = row, column
    codes = glands.site_codes(candidate.site)
    return Hotspot(
        source_index=image.frame.source_index,
        frame=image.frame.frame_number,
        column=float(column),
        row=float(row),
        score=candidate.score,
        label=f"Gland {candidate.site} ({phase})",
        site=codes.location,
        laterality=codes.laterality,
        site_modifier=codes.modifier,
    )


def load_paranet_network(
    name: str = "paranet-small", weights_path: Path | None = None, device: str = DEFAULT_DEVICE
) -> ParaNetNetwork:
    """The variant `name` with its committed weights (scintnode/weights/<name>.pt) or those at `weights_path`, on
    the device the `inference_device` setting `device` names."""
    variant = find_variant(name)
    path = Path(weights_path) if weights_path is not None else WEIGHTS_DIR / f"{variant.name}.pt"
    model, meta = load_weights(path)
    model = model.to(torch_device(device))
    if str(meta.get("variant", variant.name)) != variant.name:
        raise ValueError(f"{path} holds weights of {meta.get('variant')}, not {variant.name}")
    spec = model_spec(variant.name, file_sha256(path), str(meta.get("version", "0")), bool(meta.get("synthetic", True)))
    method: Method = "gradcam++" if meta.get("cam_method") == "gradcam++" else "gradcam"
    return ParaNetNetwork(model, spec, int(meta.get("image_size", variant.image_size)), method)
