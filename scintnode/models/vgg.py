"""VGG19 convolutional features (Simonyan & Zisserman 2015) in plain torch, with torchvision's parameter names.

Built by networks that use VGG19 paths (ParaNet, paper 000); a site's torchvision VGG19 weights load with
`load_torchvision_features`, so `features.N.weight` of their file lands on the same layer here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

# Convolutions per stage of VGG19 (configuration "E"): 2, 2, 4, 4, 4, each stage followed by a 2x2 max-pool.
VGG19_STAGES: tuple[int, ...] = (2, 2, 4, 4, 4)
VGG19_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)


def vgg_features(
    widths: Sequence[int] = VGG19_WIDTHS,
    in_channels: int = 3,
    stages: Sequence[int] = VGG19_STAGES,
    last_pool: bool = True,
    batch_norm: bool = False,
) -> nn.Sequential:
    """VGG feature layers: 3x3 conv + ReLU per convolution, a max-pool after each stage.

    The layer indices are torchvision's (conv, ReLU and pool each take one index), so the state_dict keys
    are `N.weight`/`N.bias` at the same N. `last_pool=False` drops the final max-pool (no parameters, so
    the keys do not change): ParaNet's paths end on the last convolution. `batch_norm=True` is torchvision's
    vgg19_bn layout (conv, batch norm, ReLU)."""
    if len(widths) != len(stages):
        raise ValueError(f"{len(stages)} stages need {len(stages)} widths, got {list(widths)}")
    layers: list[nn.Module] = []
    channels = in_channels
    for stage, (width, convolutions) in enumerate(zip(widths, stages, strict=True)):
        for _ in range(convolutions):
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            channels = width
        if last_pool or stage < len(stages) - 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    features = nn.Sequential(*layers)
    for module in features.modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return features


def last_conv_index(features: nn.Sequential, stage: int | None = None) -> int:
    """Index of the ReLU after the last convolution of `stage` (1-based; default the last): where Grad-CAM looks."""
    pools = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    stages = len(pools) + (not pools or pools[-1] != len(features) - 1)
    chosen = stages if stage is None else stage
    if not 1 <= chosen <= stages:
        raise ValueError(f"stage {stage} outside 1..{stages}")
    end = pools[chosen - 1] if chosen <= len(pools) else len(features)
    for index in range(end - 1, -1, -1):
        if isinstance(features[index], nn.ReLU):
            return index
    raise ValueError("the feature stack has no ReLU")


def load_torchvision_features(features: nn.Sequential, state_dict: Mapping[str, Tensor]) -> None:
    """Copy a torchvision VGG19 state_dict's `features.*` into `features` (classifier keys are ignored).

    A 3-channel first convolution (ImageNet weights) loaded into a 1-channel path is summed over its input
    channels, the usual way to feed grey images to an RGB-trained network."""
    wanted = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
    if not wanted:
        raise ValueError("the state_dict has no 'features.*' keys; expected a torchvision VGG19 state_dict")
    own = features.state_dict()
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise ValueError(f"the state_dict lacks {len(missing)} feature parameter(s), e.g. {missing[:3]}")
    converted: dict[str, Tensor] = {}
    for key, target in own.items():
        value = wanted[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1] and target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != target.shape:
            raise ValueError(f"features.{key}: the file has shape {tuple(value.shape)}, the path {tuple(target.shape)}")
        converted[key] = value.to(torch.float32)
    features.load_state_dict(converted)
