"""Fuzzing, bounded in time: the receive path's header checks and the rule engine on random input.

read_header must either return a Header or raise Rejected with a DICOM failure status, whatever bytes
arrive; the shipped rule set must evaluate any header (derived facts included) without raising."""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scintnode.config import DEFAULT_RULES_DIR
from scintnode.phantoms import nm
from scintnode.receive_header import CANNOT_UNDERSTAND, DATASET_MISMATCH, INVALID_UID, Rejected, read_header
from scintnode.receive_index import Header
from scintnode.route import load_rule_set
from scintnode.route.facts import derive_facts

FAILURES = {CANNOT_UNDERSTAND, DATASET_MISMATCH, INVALID_UID}
BOUNDED = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _seed_file() -> tuple[bytes, str, str]:
    patient = nm.Patient("SYNFUZZ", "SYNTHETIC^FUZZ", dt.date(1970, 1, 1), "F")
    start = dt.datetime(2026, 3, 2, 9, 0)
    study = nm.StudyInfo(generate_uid(), start, accession="SYNFUZZ", description="fuzz (synthetic)")
    ds = nm.build_nm_image(
        np.ones((1, 8, 8), np.uint16),
        patient=patient,
        study=study,
        series_uid=generate_uid(),
        series_number=1,
        series_description="THYROID ANT (synthetic)",
        agent="pertechnetate",
        views=("anterior",),
        acquired=start + dt.timedelta(minutes=20),
        injected=start,
        dose_mbq=80.0,
        pixel_spacing_mm=(2.0, 2.0),
        body_part="THYROID",
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID)


SEED, SOP_CLASS, SOP_INSTANCE = _seed_file()
RULES = load_rule_set(DEFAULT_RULES_DIR)


def _check(data: bytes) -> None:
    try:
        header = read_header(data, SOP_CLASS, SOP_INSTANCE)
    except Rejected as exc:
        assert exc.status in FAILURES and exc.reason
        return
    assert isinstance(header, Header) and header.sop_instance_uid == SOP_INSTANCE


@pytest.mark.parametrize("keyword_tag", [b"\x28\x00\x02\x00", b"\x28\x00\x10\x00", b"\x28\x00\x00\x01"])
def test_a_damaged_vr_in_an_image_size_attribute_is_refused_as_undecodable(keyword_tag: bytes) -> None:
    # found by the byte-flip search below: pydicom converts a value on first access, so a damaged VR in
    # Samples per Pixel, Rows or Bits Allocated once escaped the header read as NotImplementedError
    data = bytearray(SEED)
    at = data.index(keyword_tag, 132 + 12)  # past the File Meta's first elements
    data[at + 5] = 0  # "US" becomes "U\x00"
    with pytest.raises(Rejected) as refused:
        read_header(bytes(data), SOP_CLASS, SOP_INSTANCE)
    assert refused.value.status == CANNOT_UNDERSTAND


@BOUNDED
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_read_header_survives_byte_flips(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEED)
    for at, value in flips:
        data[at] = value
    _check(bytes(data))


@BOUNDED
@given(st.integers(0, len(SEED)), st.binary(max_size=64), st.integers(0, 64))
def test_read_header_survives_cuts_and_insertions(at: int, inserted: bytes, dropped: int) -> None:
    _check(SEED[:at] + inserted + SEED[at + dropped :])


@BOUNDED
@given(st.binary(max_size=2048))
def test_read_header_survives_random_bytes_after_the_file_meta(tail: bytes) -> None:
    _check(SEED[:300] + tail)


_TEXT = st.text(max_size=40)
_VALUES = {
    "Modality": st.sampled_from(["NM", "CT", "SR", "", "nm", "PT"]) | _TEXT,
    "ImageType": st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "STATIC", "WHOLE BODY", "DERIVED", ""]), max_size=5),
    "BodyPartExamined": st.sampled_from(["THYROID", "NECK", ""]) | _TEXT,
    "SeriesDescription": _TEXT,
    "StudyDescription": _TEXT,
    "ProtocolName": _TEXT,
    "PatientName": _TEXT,
    "AcquisitionDateTime": st.sampled_from(["20260302091000", "2026", "garbage", ""]),
    "SeriesDate": st.sampled_from(["20260302", "2026-03-02", "", "99999999"]),
    "SeriesTime": st.sampled_from(["091000", "9", "", "25:61"]),
    "Rows": st.integers(0, 65535),
    "NumberOfFrames": st.sampled_from(["1", "0", "-3", "abc", ""]),
    "FrameOfReferenceUID": st.sampled_from(["1.2.3", "", "not a uid"]),
}


def _code_item(draw: st.DrawFn) -> Dataset:
    item = Dataset()
    item.CodeValue = draw(st.sampled_from(["C-163A8", "C-B1031", "C-111A1", "", "X"]) | _TEXT)
    item.CodingSchemeDesignator = draw(st.sampled_from(["SRT", "SCT", "99X", ""]))
    item.CodeMeaning = draw(_TEXT)
    return item


@st.composite
def random_headers(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    for keyword, strategy in _VALUES.items():
        if draw(st.booleans()):
            value = draw(strategy)
            try:
                setattr(ds, keyword, value)
            except (ValueError, TypeError, OverflowError):
                continue
    if draw(st.booleans()):
        info = Dataset()
        if draw(st.booleans()):
            info.RadionuclideCodeSequence = Sequence([_code_item(draw)])
        if draw(st.booleans()):
            info.RadiopharmaceuticalCodeSequence = Sequence([_code_item(draw)])
        if draw(st.booleans()):
            info.Radiopharmaceutical = draw(_TEXT)
        if draw(st.booleans()):
            info.RadiopharmaceuticalStartDateTime = draw(st.sampled_from(["20260302090000", "bad", ""]))
        ds.RadiopharmaceuticalInformationSequence = Sequence([info] * draw(st.integers(0, 3)))
    if draw(st.booleans()):
        window = Dataset()
        band = Dataset()
        band.EnergyWindowLowerLimit = draw(st.sampled_from(["126", "-1", "1e309", ""]))
        band.EnergyWindowUpperLimit = draw(st.sampled_from(["154", "0", "nan", ""]))
        window.EnergyWindowRangeSequence = Sequence([band])
        ds.EnergyWindowInformationSequence = Sequence([window] * draw(st.integers(0, 2)))
    if draw(st.booleans()):
        ds.ViewCodeSequence = Sequence([_code_item(draw)])
    return ds


@BOUNDED
@given(random_headers())
def test_the_shipped_rules_evaluate_any_header(header: Dataset) -> None:
    facts = derive_facts(header)
    decisions = RULES.evaluate(header, facts)
    assert [d.rule.name for d in decisions] == [r.name for r in RULES.rules]
    for decision in decisions:
        assert decision.trace and not (decision.fires and not decision.matched)
