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


def i131_cases(out: Path, per_class: int, seed: int) -> list[DemoStudy]:
    from scintnode.phantoms.i131_neck import write_studies

    truth = json.loads(write_studies(out, count=2 * per_class, seed=seed, residual_fraction=0.5).read_text())
    return [
        DemoStudy("i131-neck-resnet18", ((out / str(e["file"]),),), str(e["study_instance_uid"]), str(e["label"]))
        for e in truth["images"]
    ]


def bone_cases(out: Path, per_class: int, seed: int) -> list[DemoStudy]:
    """Whole-body studies, each one 2-frame object (anterior + posterior) sent in one association."""
    from scintnode.phantoms.bone import write_studies

    truth = json.loads(write_studies(out, per_class=per_class, seed=seed).read_text())
    return [
        DemoStudy("dscint", ((out / str(e["file"]),),), str(e["study_instance_uid"]), str(e["label"]))
        for e in truth["images"]
    ]


def ct_cases(
    out: Path,
    per_class: int,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> list[DemoStudy]:
    """Dual-phase neck CT: the unenhanced and the enhanced series sent in two associations, as a scanner
    forwarding each reconstruction would; every synthetic patient has glands, so a SEG is expected.

    `shape` and `spacing_mm` change each series' geometry (default: the small demo volume)."""
    from scintnode.phantoms import ct_parathyroid

    truth = json.loads(
        ct_parathyroid.write_studies(
            out,
            count=per_class,
            seed=seed,
            shape=shape or ct_parathyroid.SHAPE,
            spacing_mm=spacing_mm or ct_parathyroid.SPACING_MM,
        ).read_text()
    )
    return [
        DemoStudy(
            "ct-parathyroid-unet",
            tuple(tuple(out / str(f) for f in e[phase]["files"]) for phase in ("unenhanced", "enhanced")),
            str(e["study_instance_uid"]),
            "glands",
            frozenset({"SEG", "SR", "OT"}),
        )
        for e in truth["cases"]
    ]


def parathyroid_cases(out: Path, per_class: int, seed: int) -> list[DemoStudy]:
    """Dual-phase MIBI (early + late in one association) and the pertechnetate thyroid scan in another, often
    of another study on another day; results go into the study of the most recent image, the thyroid scan's.
    Only patients with a thyroid scan are sent: without one the episode waits for its 3-day deadline."""
    from scintnode.phantoms.parathyroid import write_studies

    truth = json.loads(write_studies(out, patients=4 * per_class, seed=seed).read_text())
    scanned = [e for e in truth["cases"] if e["thyroid_study_instance_uid"]]
    chosen = [e for label in ("normal", "abnormal") for e in scanned if e["label"] == label][: 2 * per_class]
    return [
        DemoStudy(
            "paranet-small",
            (
                (out / str(e["files"]["early"]), out / str(e["files"]["late"])),
                (out / str(e["files"]["thyroid"]),),
            ),
            str(e["thyroid_study_instance_uid"]),
            str(e["label"]),
        )
        for e in chosen
    ]


CASES: dict[str, Callable[[Path, int, int], list[DemoStudy]]] = {
    "thyroid-resnet34": thyroid_cases,
    "dscint": bone_cases,
    "i131-neck-resnet18": i131_cases,
    "ct-parathyroid-unet": ct_cases,
    "paranet-small": parathyroid_cases,
}
