"""What `scintnode demo` sends, per network: synthetic studies, the study their results go into, the truth.

Each network adds one function here that writes its synthetic studies and describes them; demo.py
sends them as a modality would and checks the results in the PACS."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoStudy:
    """One synthetic case: the files a modality sends (each inner tuple is one association)."""

    network: str
    associations: tuple[tuple[Path, ...], ...]
    result_study_uid: str  # where the SR and SC must land
    truth: str  # synthetic ground-truth class
    result_modalities: frozenset[str] = frozenset({"SR", "OT"})


def thyroid_cases(out: Path, per_class: int, seed: int) -> list[DemoStudy]:
    from scintnode.phantoms.thyroid import write_studies

    truth = json.loads(write_studies(out, per_class=per_class, seed=seed).read_text())
    return [
        DemoStudy("thyroid-resnet34", ((out / str(e["file"]),),), str(e["study_instance_uid"]), str(e["label"]))
        for e in truth["images"]
    ]


CASES: dict[str, Callable[[Path, int, int], list[DemoStudy]]] = {
    "thyroid-resnet34": thyroid_cases,
}
