"""What a network is, as data: its labels with their codes, the organ it looks at, its weights' identity.

Consumed by the writers (SR codes, SC text) and the router (network names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.16 style): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class LabelSpec:
    """One output class of a classifier."""

    key: str  # stable identifier used in configs and JSON, e.g. "graves"
    display: str  # human text burned into the SC, e.g. "Graves' disease"
    code: Code  # the Finding code written into the SR


@dataclass(frozen=True)
class ModelSpec:
    """Identity of a loaded network: everything the outputs must say about the algorithm."""

    name: str  # registry name, used by rules, e.g. "thyroid-resnet34"
    version: str  # algorithm version written into TID 4019
    title: str  # short human title, e.g. "Thyroid scintigraphy classifier (ResNet-34)"
    labels: tuple[LabelSpec, ...]
    finding_site: Code  # organ, e.g. Thyroid (69748006, SCT)
    procedure: Code  # imaging procedure analysed (121058), not the algorithm
    weights_sha256: str  # of the weights file actually loaded
    trained_on_synthetic: bool  # True for every weights file this project ships

    def label(self, key: str) -> LabelSpec:
        for spec in self.labels:
            if spec.key == key:
                return spec
        raise KeyError(f"{self.name} has no label {key!r}")
