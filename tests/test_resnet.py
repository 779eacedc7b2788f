"""ResNet-18/34 keep torchvision's parameter names and shapes, so a site's state_dict loads unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scintnode.models.resnet import ResNet, load_backbone, resnet18, resnet34


def torchvision_table(blocks: tuple[int, ...], num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """torchvision's ResNet (BasicBlock) state_dict keys and shapes, written out from the architecture."""
    table: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, width: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            table[f"{prefix}.{name}"] = (width,)
        table[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True), start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            table[f"{prefix}.conv1.weight"] = (width, inplanes if block == 0 else width, 3, 3)
            bn(f"{prefix}.bn1", width)
            table[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{prefix}.bn2", width)
            if block == 0 and stage > 1:
                table[f"{prefix}.downsample.0.weight"] = (width, inplanes, 1, 1)
                bn(f"{prefix}.downsample.1", width)
        inplanes = width
    table["fc.weight"] = (num_classes, 512)
    table["fc.bias"] = (num_classes,)
    return table


@pytest.mark.parametrize(
    ("factory", "blocks", "parameters"),
    [(resnet18, (2, 2, 2, 2), 11_689_512), (resnet34, (3, 4, 6, 3), 21_797_672)],
)
def test_state_dict_matches_torchvision(
    factory: Callable[[], ResNet], blocks: tuple[int, ...], parameters: int
) -> None:
    model = factory()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == torchvision_table(blocks)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_forward_gives_logits_and_512_features() -> None:
    model = resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        assert model.features(x).shape == (2, 512)


def test_load_backbone_ignores_fc_and_refuses_other_depth() -> None:
    source = resnet18(num_classes=1000)
    target = resnet18(num_classes=5)
    load_backbone(target, source.state_dict())
    assert torch.equal(target.state_dict()["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert target.fc.weight.shape == (5, 512)
    with pytest.raises(ValueError, match="missing keys"):
        load_backbone(resnet34(), source.state_dict())
