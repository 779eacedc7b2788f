"""The names of the networks this build can run, without importing torch (for `rules check`)."""

from __future__ import annotations

NETWORKS: dict[str, str] = {
    "thyroid-resnet34": "99mTc-pertechnetate thyroid scintigraphy, 4 classes (paper 002)",
    "i131-neck-resnet18": "131I neck scan after thyroidectomy, residual thyroid tissue or not (paper 004)",
    "dscint": "whole-body bone (99mTc-MDP/HDP) and I-131 scintigraphy, anterior+posterior, 4 classes (paper 003)",
    "ct-parathyroid-unet": "dual-phase (unenhanced + enhanced) neck CT, parathyroid glands as SEG + SR (paper 001)",
    "paranet-small": "parathyroid MIBI early + late (+ pertechnetate thyroid) episode, small ParaNet (paper 000)",
    "paranet": "ParaNet as in paper 000 (3x VGG19 at 350 px); no weights shipped: scintnode train parathyroid",
    "input-check": "no AI: checks an episode's inputs and reports them (stand-in until a network lands)",
}


def network_names() -> tuple[str, ...]:
    return tuple(sorted(NETWORKS))
