"""Grad-CAM (Selvaraju et al., IJCV 2020) and Grad-CAM++ (Chattopadhay et al., WACV 2018) for any torch module.

Used by infer (through each network) to explain a prediction; hooks live only inside a `with` block, so a
daemon that explains thousands of jobs never accumulates them (MONAI's GradCAM never removes its hooks).
The forward pass and the explanation are separate calls, each timed (Grad-CAM is outside the network in
issue 10's accounting); a network may pick the class to explain from the logits of its one pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from scintnode.models.device import finish_queued_work, model_device

Method = Literal["gradcam", "gradcam++"]
Hook = Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]


@dataclass(frozen=True)
class CamResult:
    """Logits of the forward pass and, per target layer, one class activation map per batch item."""

    logits: Tensor  # (N, classes), detached, on the CPU
    class_indices: tuple[int, ...]  # the class each map explains
    layer_maps: dict[str, np.ndarray]  # target layer -> (N, h, w) float32, >= 0, not normalised
    forward_ms: float  # the forward pass these maps explain
    explain_ms: float  # the gradients and the maps

    @property
    def maps(self) -> np.ndarray:
        """The maps of the first target layer."""
        return next(iter(self.layer_maps.values()))


class ClassActivationMap:
    """Grad-CAM or Grad-CAM++ on the output of each of `target_layers` of `model`, used as a context manager.

    `with ClassActivationMap(model, "layer4") as cam: result = cam(x)`, or in two steps, `logits =
    cam.forward(x)` then `result = cam.explain(class_index)`. The forward hooks are registered on entry and
    removed on exit, also when the body raises. Inside the block the parameters are frozen and the first
    target layer reached hands on its output as a fresh leaf of the autograd graph, so the layers before it
    record no graph (the pass costs about what an inference pass costs) and parameter `.grad` fields are left
    untouched.
    One forward pass serves every target layer. One instance is not meant to be shared between threads."""

    def __init__(self, model: nn.Module, target_layers: str | Sequence[str], method: Method = "gradcam") -> None:
        names = (target_layers,) if isinstance(target_layers, str) else tuple(target_layers)
        modules = dict(model.named_modules())
        unknown = [name for name in names if name not in modules]
        if unknown or not names:
            known = ", ".join([n for n in modules if n][:12])
            raise ValueError(f"model has no layer named {(unknown or [''])[0]!r}; some layers it has: {known}")
        if method not in ("gradcam", "gradcam++"):
            raise ValueError(f"unknown CAM method {method!r}; use 'gradcam' or 'gradcam++'")
        self.model = model
        self.target_layers = names
        self.method: Method = method
        self._layers = [modules[name] for name in names]
        self._handles: list[RemovableHandle] = []
        self._frozen: list[nn.Parameter] = []
        self._activations: dict[str, Tensor] = {}
        self._logits: Tensor | None = None
        self._forward_ms = 0.0

    def __enter__(self) -> ClassActivationMap:
        if self._handles:
            raise RuntimeError("ClassActivationMap is already active; it cannot be entered twice")
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for parameter in self._frozen:
            parameter.requires_grad_(False)
        self._handles = [
            layer.register_forward_hook(self._capture(name))
            for name, layer in zip(self.target_layers, self._layers, strict=True)
        ]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for parameter in self._frozen:
            parameter.requires_grad_(True)
        self._frozen = []
        self._activations = {}
        self._logits = None

    def _capture(self, name: str) -> Hook:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            if not isinstance(output, Tensor):
                raise RuntimeError(f"layer {name!r} produced no tensor during the forward pass")
            # Below an earlier target layer the graph already runs through the output: cutting it there would
            # leave that layer without a gradient.
            activation = output if output.requires_grad else output.detach().requires_grad_(True)
            self._activations[name] = activation
            # A clone goes on: a following in-place op (ReLU(inplace=True)) must not modify what is explained.
            return activation.clone()

        return hook

    def __call__(self, x: Tensor, class_index: int | None = None) -> CamResult:
        """Run `model` on `x` and explain `class_index` (default: each item's highest logit)."""
        self.forward(x)
        return self.explain(class_index)

    def forward(self, x: Tensor) -> Tensor:
        """Run `model` on `x` (moved to the model's device); returns the (N, classes) logits, detached, on that
        device. `explain` may follow once."""
        if not self._handles:
            raise RuntimeError("use ClassActivationMap inside a `with` block")
        self._activations = {}
        device = model_device(self.model)
        x = x.detach().to(device)
        started = time.perf_counter()
        with torch.enable_grad():
            logits = self.model(x)
        finish_queued_work(device)
        self._forward_ms = (time.perf_counter() - started) * 1000.0
        missing = [name for name in self.target_layers if name not in self._activations]
        if missing:
            raise RuntimeError(f"layer {missing[0]!r} did not run during the forward pass")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"CAM needs (N, classes) logits; the model returned {shape}")
        self._logits = logits
        return logits.detach()

    def explain(self, class_index: int | None = None) -> CamResult:
        """The maps of the last `forward` for `class_index` (default: each item's highest logit)."""
        started = time.perf_counter()
        logits = self._logits
        if logits is None:
            raise RuntimeError("call forward(x) before explain(); each forward pass is explained once")
        self._logits = None
        if class_index is None:
            indices = logits.detach().argmax(dim=1)
        else:
            if not 0 <= class_index < logits.shape[1]:
                raise ValueError(f"class index {class_index} outside 0..{logits.shape[1] - 1}")
            indices = torch.full((logits.shape[0],), class_index, dtype=torch.long, device=logits.device)
        activations = [self._activations[name] for name in self.target_layers]
        with torch.enable_grad():
            score = logits.gather(1, indices[:, None]).sum()
            grads = torch.autograd.grad(score, activations)
        layer_maps = {
            name: _combine(activation.detach(), grad.detach(), self.method).float().cpu().numpy()
            for name, activation, grad in zip(self.target_layers, activations, grads, strict=True)
        }
        explain_ms = (time.perf_counter() - started) * 1000.0
        return CamResult(
            logits.detach().cpu(), tuple(int(i) for i in indices), layer_maps, self._forward_ms, explain_ms
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
