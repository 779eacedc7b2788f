"""A source whose patient or study header highdicom would refuse still gets its results, carrying the source's
values as they are: a non-standard Patient's Sex, dates and times not in DICOM's form, Type 2 attributes left
out, character sets highdicom does not list (the standard ``\\ISO 2022 IR 87`` among them). Before, one such
header cost the job its SR, SC and SEG after the network had run."""

from __future__ import annotations

import copy
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from scintnode.infer import run_network
from scintnode.models.registry import default_registry
from scintnode.write.seg import build_segmentation
from scintnode.write.sr import build_report
from tests.dicom_validation import assert_dciodvfy_clean
from tests.test_ct_outputs import FixedMask, phases  # noqa: F401  (phases is a fixture)
from tests.test_nm_header import thyroid_source

# pydicom and highdicom warn about the values these cases give on purpose
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MALFORMED = {
    "PatientSex": "U",  # not one of M, F, O; sent by many systems for "unknown"
    "PatientBirthDate": "19800230",  # no such day
    "StudyDate": "2026-12-07",  # ISO form, not DICOM's YYYYMMDD
    "StudyTime": "256100",  # no such hour
}
# a name of several values, which highdicom refuses by type
NAMES = {"ReferringPhysicianName": ["Doe^Jane", "Roe^Richard"], "PatientName": ["Doe^John", "Doe^Johnny"]}
TYPE_2 = ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate"]


def _results(source: Dataset) -> list[Dataset]:
    """The SR and SC the thyroid network's job writes for ``source``, read back from their files."""
    result = run_network(default_registry().get("thyroid-resnet34"), [source], ("sr", "sc"))
    assert [out.kind for out in result.outputs] == ["sr", "sc"]
    return [dcmread(BytesIO(out.encoded)) for out in result.outputs]


@pytest.mark.parametrize(("keyword", "value"), MALFORMED.items())
def test_a_value_highdicom_refuses_is_carried_as_the_source_has_it(keyword: str, value: str) -> None:
    source = thyroid_source()
    setattr(source, keyword, value)
    for written in _results(source):
        assert written[keyword].value == value, written.Modality
        assert written.PatientID == source.PatientID and written.StudyInstanceUID == source.StudyInstanceUID


@pytest.mark.parametrize(("keyword", "value"), NAMES.items())
def test_a_name_of_several_values_is_carried_as_the_source_has_it(keyword: str, value: list[str]) -> None:
    source = thyroid_source()
    setattr(source, keyword, value)
    for written in _results(source):
        assert [str(name) for name in written[keyword].value] == value, written.Modality


def test_a_camera_description_highdicom_refuses_leaves_out_only_the_cameras_entry() -> None:
    """A Station Name over SH's 16 characters: highdicom's own SOP classes leave the camera's Contributing
    Equipment entry out in this case; the results keep the node's entry and the source's station name."""
    source = thyroid_source()
    source.StationName = "NUCLEAR-MEDICINE-ROOM-2-GAMMA-CAMERA"
    for written in _results(source):
        purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in written.ContributingEquipmentSequence]
        assert "109101" not in purposes, written.Modality  # DCM Acquisition Equipment
        assert purposes == ["109102", "109102"]  # DCM Processing Equipment: scintnode, then highdicom


@pytest.mark.parametrize("keyword", TYPE_2)
def test_a_type_2_attribute_the_source_lacks_is_written_empty(keyword: str) -> None:
    source = thyroid_source()
    del source[keyword]
    for written in _results(source):
        assert keyword in written and written[keyword].is_empty, written.Modality


@pytest.mark.parametrize(
    ("character_set", "name"),
    [
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),  # PS3.5 H.3.1: the first value empty, ISO-IR 6 in G0
        ("", "Doe^Jane"),  # present and empty: the default repertoire
        ("ISO_IR 6", "Doe^Jane"),  # not a defined term; pydicom reads it as ASCII
        ("ISO_IR 999", "Doe^Jane"),  # unknown
    ],
)
def test_a_character_set_highdicom_does_not_list_is_carried_with_the_names_in_it(
    character_set: str | list[str], name: str
) -> None:
    source = thyroid_source()
    source.SpecificCharacterSet = character_set
    source.PatientName = name
    for written in _results(source):
        assert written.SpecificCharacterSet == character_set, written.Modality
        assert str(written.PatientName) == name
        if written.Modality == "SR" and character_set == ["", "ISO 2022 IR 87"]:
            # dsrdump only warns that its checker does not support ISO 2022; dciodvfy checks the whole document
            assert_dciodvfy_clean(written)


def test_the_ct_seg_and_sr_carry_a_non_standard_patient_sex(
    phases: tuple[list[Dataset], list[Dataset]],  # noqa: F811
) -> None:
    native, enhanced = (copy.deepcopy(series) for series in phases)
    for ds in [*native, *enhanced]:
        ds.PatientSex = "U"
        ds.StudyTime = "256100"
    sources = [*native, *enhanced]
    finding = FixedMask().run_episode(["unenhanced"] * len(native) + ["enhanced"] * len(enhanced), sources)
    segmentation = build_segmentation(finding, sources)
    report = build_report(finding, sources, segmentation=segmentation)
    for document in (segmentation, report):
        assert (document.PatientSex, document.StudyTime) == ("U", "256100")
