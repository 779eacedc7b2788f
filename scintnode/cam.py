"""Grad-CAM (Selvaraju et al., IJCV 2020) and Grad-CAM++ (Chattopadhay et al., WACV 2018) for any torch module.

Used by infer (through each network) to explain a prediction; hooks live only inside a `with` block, so a
daemon that explains thousands of jobs never accumulates them (MONAI's GradCAM never removes its hooks)."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Method = Literal["gradcam", "gradcam++"]


@dataclass(frozen=True)
class CamResult:
    """Logits of the forward pass and one class activation map per batch item, at the target layer's grid."""

    logits: Tensor  # (N, classes), detached
    class_indices: tuple[int, ...]  # the class each map explains
    maps: np.ndarray  # (N, h, w) float32, >= 0, not normalised


class ClassActivationMap:
    """Grad-CAM or Grad-CAM++ on the output of `target_layer` of `model`, used as a context manager.

    `with ClassActivationMap(model, "layer4") as cam: result = cam(x)`; the forward hook is registered on
    entry and removed on exit, also when the body raises. Gradients are taken with `torch.autograd.grad`
    with respect to the captured activation only, so no backward hooks are needed and parameter `.grad`
    fields are left untouched. One instance is not meant to be shared between threads."""

    def __init__(self, model: nn.Module, target_layer: str, method: Method = "gradcam") -> None:
        modules = dict(model.named_modules())
        if target_layer not in modules:
            names = [n for n in modules if n][:12]
            raise ValueError(f"model has no layer named {target_layer!r}; some layers it has: {', '.join(names)}")
        if method not in ("gradcam", "gradcam++"):
            raise ValueError(f"unknown CAM method {method!r}; use 'gradcam' or 'gradcam++'")
        self.model = model
        self.target_layer = target_layer
        self.method: Method = method
        self._layer = modules[target_layer]
        self._handle: RemovableHandle | None = None
        self._activation: Tensor | None = None

    def __enter__(self) -> ClassActivationMap:
        if self._handle is not None:
            raise RuntimeError("ClassActivationMap is already active; it cannot be entered twice")
        self._handle = self._layer.register_forward_hook(self._capture)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._activation = output

    def __call__(self, x: Tensor, class_index: int | None = None) -> CamResult:
        """Run `model` on `x` and explain `class_index` (default: each item's highest logit)."""
        if self._handle is None:
            raise RuntimeError("use ClassActivationMap inside a `with` block")
        with torch.enable_grad():
            # An input that requires grad keeps a graph even if the caller froze every parameter.
            logits = self.model(x.detach().requires_grad_(True))
            activation = self._activation
            self._activation = None
            if activation is None or not isinstance(activation, Tensor):
                raise RuntimeError(f"layer {self.target_layer!r} produced no tensor during the forward pass")
            if logits.ndim != 2:
                raise ValueError(f"CAM needs (N, classes) logits; the model returned shape {tuple(logits.shape)}")
            if class_index is None:
                indices = logits.argmax(dim=1)
            else:
                if not 0 <= class_index < logits.shape[1]:
                    raise ValueError(f"class index {class_index} outside 0..{logits.shape[1] - 1}")
                indices = torch.full((logits.shape[0],), class_index, dtype=torch.long)
            score = logits.gather(1, indices[:, None]).sum()
            (grads,) = torch.autograd.grad(score, activation)
        maps = _combine(activation.detach(), grads.detach(), self.method)
        return CamResult(
            logits=logits.detach(),
            class_indices=tuple(int(i) for i in indices),
            maps=maps.float().numpy(),
        )


def _combine(activation: Tensor, grads: Tensor, method: Method) -> Tensor:
    if activation.ndim != 4:
        raise ValueError(f"CAM needs a (N, C, h, w) layer output; got shape {tuple(activation.shape)}")
    if method == "gradcam":
        weights = grads.mean(dim=(2, 3))
    else:
        # Grad-CAM++ closed form with the exponential-score assumption (Chattopadhay et al., eq. 19).
        g2 = grads.pow(2)
        g3 = grads.pow(3)
        denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(denominator != 0, g2 / denominator.where(denominator != 0, torch.ones_like(g2)), 0.0)
        weights = (alpha * torch.relu(grads)).sum(dim=(2, 3))
    return torch.relu((weights[:, :, None, None] * activation).sum(dim=1))


def to_grid(cam_map: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """One map resized (bilinear) to rows x columns and scaled to 0..1 (all zeros stays all zeros)."""
    if cam_map.ndim != 2:
        raise ValueError(f"expected one 2-D map, got shape {cam_map.shape}")
    resized: np.ndarray = np.maximum(
        cv2.resize(cam_map.astype(np.float32), (columns, rows), interpolation=cv2.INTER_LINEAR), 0.0
    )
    peak = float(resized.max())
    return (resized / peak if peak > 0 else resized).astype(np.float32)
