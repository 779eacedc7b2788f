"""The names of the networks this build can run, without importing torch (for `rules check`)."""

from __future__ import annotations

NETWORKS: dict[str, str] = {
    "thyroid-resnet34": "99mTc-pertechnetate thyroid scintigraphy, 4 classes (paper 002)",
    "input-check": "no AI: checks an episode's inputs and reports them (stand-in until a network lands)",
}


def network_names() -> tuple[str, ...]:
    return tuple(sorted(NETWORKS))
