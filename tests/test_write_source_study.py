"""A source whose patient or study header highdicom would refuse still gets its results, carrying the source's
values as they are: a non-standard Patient's Sex, dates and times not in DICOM's form, Type 2 attributes left
out. Before, one such header cost the job its SR, SC and SEG after the network had run."""

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


@pytest.mark.parametrize("keyword", TYPE_2)
def test_a_type_2_attribute_the_source_lacks_is_written_empty(keyword: str) -> None:
    source = thyroid_source()
    del source[keyword]
    for written in _results(source):
        assert keyword in written and written[keyword].is_empty, written.Modality


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
