"""Grad-CAM and Grad-CAM++ point at the evidence and never leave hooks behind, even when the body raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from scintnode.cam import ClassActivationMap, Method, to_grid
from scintnode.models.resnet import resnet18


class BlobDetector(nn.Module):
    """Class 1 is the mean of a bright-spot feature map; class 0 its negative, so the evidence is the spot."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0  # channel 0 copies the input
            conv.weight[1, 0] = 0.1  # channel 1 is a flat blur, no use for class 1
        self.features = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return out


def _peak(cam_map: np.ndarray) -> tuple[int, int]:
    row, column = np.unravel_index(int(cam_map.argmax()), cam_map.shape)
    return int(row), int(column)


def _hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks) + len(m._forward_pre_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_map_peaks_at_the_planted_signal(method: Method) -> None:
    model = BlobDetector().eval()
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 11, 4] = 5.0
    with ClassActivationMap(model, "features", method) as cam:
        result = cam(x, class_index=1)
    assert result.maps.shape == (1, 16, 16)
    assert _peak(result.maps[0]) == (11, 4)
    assert result.class_indices == (1,)
    assert result.forward_ms > 0 and result.explain_ms > 0
    assert _hooks_left(model) == 0


def test_no_hooks_remain_after_use_or_error() -> None:
    model = resnet18(num_classes=4).eval()
    with ClassActivationMap(model, "layer4") as cam:
        result = cam(torch.randn(2, 3, 64, 64))
        assert len(model.layer4._forward_hooks) == 1
    assert result.maps.shape == (2, 2, 2)
    assert result.logits.shape == (2, 4)
    assert _hooks_left(model) == 0
    assert all(p.grad is None for p in model.parameters())

    with pytest.raises(RuntimeError, match="boom"), ClassActivationMap(model, "layer4") as cam:
        cam(torch.randn(1, 3, 64, 64))
        raise RuntimeError("boom")
    assert _hooks_left(model) == 0

    with pytest.raises(ValueError), ClassActivationMap(model, "layer4") as cam:
        cam(torch.randn(1, 3, 64, 64), class_index=9)
    assert _hooks_left(model) == 0


def test_works_under_no_grad_and_with_frozen_parameters() -> None:
    model = BlobDetector().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 6] = 1.0
    with torch.no_grad(), ClassActivationMap(model, "features") as cam:
        result = cam(x, class_index=1)
    assert _peak(result.maps[0]) == (2, 6)


def test_one_forward_pass_explains_every_target_layer_as_separate_passes_would() -> None:
    torch.manual_seed(3)
    model = resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    layers = ["layer3", "layer4"]
    with ClassActivationMap(model, layers) as cam:
        logits = cam.forward(x)
        together = cam.explain(class_index=2)
    for layer in layers:
        with ClassActivationMap(model, layer) as cam:
            alone = cam(x, class_index=2)
        np.testing.assert_allclose(together.layer_maps[layer], alone.maps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone.logits, logits)
    assert together.maps is together.layer_maps["layer3"]


def test_parameters_are_frozen_only_inside_the_block_and_in_place_ops_after_the_layer_work() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 6, 6))  # materialise the lazy layer
    model[3].bias.requires_grad_(False)  # a parameter frozen by its owner stays frozen
    with ClassActivationMap(model, "0") as cam:
        assert not any(p.requires_grad for p in model.parameters())
        result = cam(torch.rand(1, 1, 6, 6))
    assert result.maps.shape == (1, 6, 6)
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def test_misuse_is_refused_clearly() -> None:
    model = BlobDetector()
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        ClassActivationMap(model, "layer9")
    with pytest.raises(RuntimeError, match="inside a `with` block"):
        ClassActivationMap(model, "features")(torch.zeros(1, 1, 8, 8))
    with ClassActivationMap(model, "features") as cam:
        with pytest.raises(RuntimeError, match="before explain"):
            cam.explain()
        cam.forward(torch.zeros(1, 1, 8, 8))
        cam.explain()
        with pytest.raises(RuntimeError, match="explained once"):
            cam.explain()


def test_to_grid_resizes_and_scales() -> None:
    grid = to_grid(np.array([[0.0, 2.0], [1.0, 0.5]], dtype=np.float32), 10, 6)
    assert grid.shape == (10, 6)
    assert grid.max() == pytest.approx(1.0)
    assert grid.min() >= 0.0
    assert not to_grid(np.zeros((3, 3), dtype=np.float32), 5, 5).any()
