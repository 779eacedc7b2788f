"""ResNet-18 and ResNet-34 (He et al., "Deep residual learning for image recognition", CVPR 2016) in plain torch.

The backbone of the thyroid (paper 002) and I-131 (paper 004) networks; parameter and buffer names match
torchvision's so a site's torchvision state_dict (ImageNet or fine-tuned) loads unchanged."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

# Blocks per stage, as in He et al. 2016, Table 1 (both depths use the two-layer BasicBlock).
STAGE_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
FEATURE_WIDTH = 512


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; `downsample` (1x1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + identity)
        return result


class ResNet(nn.Module):
    """torchvision's ResNet layout: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(STAGE_WIDTHS[0], blocks[0])
        self.layer2 = self._make_layer(STAGE_WIDTHS[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(STAGE_WIDTHS[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(STAGE_WIDTHS[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = nn.Linear(FEATURE_WIDTH, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, count: int, stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers.extend(BasicBlock(planes, planes) for _ in range(1, count))
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # The same initialisation torchvision uses, so training from scratch behaves like theirs.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def features(self, x: Tensor) -> Tensor:
        """The pooled 512-wide feature vector, before `fc`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.features(x))
        return out


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(STAGE_BLOCKS["resnet18"], num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    return ResNet(STAGE_BLOCKS["resnet34"], num_classes)


def load_backbone(model: ResNet, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ResNet state_dict into `model` except its `fc`, which the papers replace.

    Every backbone key must be present with its shape, so a wrong depth fails here with a clear message."""
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    expected = {k for k in model.state_dict() if not k.startswith("fc.")}
    missing = sorted(expected - backbone.keys())
    unexpected = sorted(backbone.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"state_dict does not fit this ResNet: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    own = model.state_dict()
    wrong = [k for k, v in backbone.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"state_dict shapes differ from this ResNet for {len(wrong)} keys, e.g. {wrong[:3]}")
    model.load_state_dict(backbone, strict=False)
