"""write/sc_document.HeatmapSC makes the file highdicom's `SCImage` makes from the same arguments, byte for byte
(only the moments it was made may differ, and are aligned before comparing).

The reference is `SCImage` itself, put in HeatmapSC's place inside `build_heatmap_sc`, so everything around the
constructor (the true orientation, the patient and study copy, the references) runs alike
on both sides: for every planar network's results on its demo studies, the CT key image, and headers in
other character sets or that highdicom refuses."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from scintnode.finding import Finding
from scintnode.infer import _encoded
from scintnode.write import sc
from scintnode.write.sc import build_heatmap_sc
from scintnode.write.seg import build_key_image_sc
from scintnode.write.sop_common import Placement
from scintnode.write.source_study import carry_character_set, study_arguments
from tests.test_ct_outputs import FixedMask, phases  # noqa: F401  (phases is a fixture)
from tests.test_nm_header import thyroid_source, whole_body_source
from tests.test_write_sr import retired_class_thyroid_source, thyroid_finding
from tests.test_write_sr_content import _demo_findings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the odd headers below warn on purpose

_MOMENTS = (
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "DateOfSecondaryCapture",
    "TimeOfSecondaryCapture",
)


def scimage(source: Dataset, picture: np.ndarray, placement: Placement, **equipment: Any) -> hd.sc.SCImage:
    """The reference: highdicom's constructor, with the arguments build_heatmap_sc gave it before, then the
    source's character set carried as it is, as every result carries it."""
    document = hd.sc.SCImage(
        **study_arguments(source),
        pixel_array=picture,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **dataclasses.asdict(placement),
        **equipment,
    )
    carry_character_set(document, source)
    return document


def _both(build: Callable[[], Dataset], monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    ours = build()
    with monkeypatch.context() as patched:
        patched.setattr(sc, "HeatmapSC", scimage)
        theirs = build()
    for keyword in _MOMENTS:
        setattr(theirs, keyword, ours[keyword].value)
    for mine, reference in zip(ours.ContributingEquipmentSequence, theirs.ContributingEquipmentSequence, strict=True):
        if "ContributionDateTime" in mine:
            reference.ContributionDateTime = mine.ContributionDateTime
    return _encoded(ours), _encoded(theirs)


def _assert_same_files(build: Callable[[], Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = _both(build, monkeypatch)
    assert len(ours) == len(theirs)
    first_difference = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
    assert first_difference is None, f"the files differ from byte {first_difference}"


def _heatmaps(finding: Finding, sources: Sequence[Dataset]) -> list[Callable[[], Dataset]]:
    return [
        lambda index=index: build_heatmap_sc(  # type: ignore[misc]
            finding, sources, index, series_uid="1.2.826.0.1.3680043.8.498.1", sop_instance_uid=f"1.2.3.{index}"
        )
        for index in range(len(finding.heatmaps))
    ]


@pytest.mark.parametrize("name", ["thyroid-resnet34", "i131-neck-resnet18", "dscint", "paranet-small"])
def test_every_planar_networks_heatmaps_on_its_demo_studies(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = [build for finding, sources in _demo_findings(name, tmp_path) for build in _heatmaps(finding, sources)]
    assert builds
    for build in builds:
        _assert_same_files(build, monkeypatch)


def _retyped(**values: Any) -> Dataset:
    source = thyroid_source()
    for keyword, value in values.items():
        if value is None:
            del source[keyword]
        else:
            setattr(source, keyword, value)
    return source


SOURCES: dict[str, Callable[[], Dataset]] = {
    "whole-body, two frames": whole_body_source,
    "the retired NM class": retired_class_thyroid_source,
    "Latin-1 names": lambda: _retyped(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen"),
    "Japanese names": lambda: _retyped(
        SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="Yamada^Tarou=山田^太郎"
    ),
    "no character set": lambda: _retyped(SpecificCharacterSet=None),
    "headers highdicom refuses": lambda: _retyped(PatientSex="U", StudyDate="2026-12-07", StudyTime="256100"),
    "Type 2 attributes left out": lambda: _retyped(PatientID=None, PatientName=None, StudyID=None, PatientSex=None),
    "no manufacturer: no camera entry": lambda: _retyped(Manufacturer=None),
}


@pytest.mark.parametrize("case", SOURCES)
def test_headers_of_every_kind(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = SOURCES[case]()
    frames = [2] if int(source.get("NumberOfFrames", 1)) > 1 else None
    for build in _heatmaps(thyroid_finding([source], frames=frames), [source]):
        _assert_same_files(build, monkeypatch)


def test_the_ct_key_image(phases: tuple[list[Dataset], list[Dataset]], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    native, enhanced = (copy.deepcopy(series) for series in phases)
    sources = [*native, *enhanced]
    finding = FixedMask().run_episode(["unenhanced"] * len(native) + ["enhanced"] * len(enhanced), sources)
    monkeypatch.setattr(sc, "generate_uid", lambda: "1.2.826.0.1.3680043.8.498.3")  # its SOP Instance UID
    _assert_same_files(
        lambda: build_key_image_sc(finding, sources, series_uid="1.2.826.0.1.3680043.8.498.2"), monkeypatch
    )


def test_a_picture_that_is_not_rgb_8_bit_is_refused() -> None:
    placement = Placement("1.2.3", 1, "1.2.3.4", 1, "scintnode", "d")
    with pytest.raises(ValueError, match="RGB uint8"):
        sc.HeatmapSC({}, np.zeros((4, 4), np.uint8), placement, manufacturer_model_name="m", software_versions="1")
    too_long = dataclasses.replace(placement, series_description="x" * 65)
    with pytest.raises(ValueError, match="LO holds"):
        sc.HeatmapSC({}, np.zeros((4, 4, 3), np.uint8), too_long, manufacturer_model_name="m", software_versions="1")
