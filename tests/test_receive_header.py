"""The header check decodes only the attributes the node needs: it must read them exactly as pydicom's full
read does, in every uncompressed transfer syntax and character set, and refuse what it cannot read."""

from __future__ import annotations

import datetime as dt
import struct
from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from scintnode.phantoms import nm
from scintnode.phantoms.ct import build_ct_series
from scintnode.receive_header import CANNOT_UNDERSTAND, DATASET_MISMATCH, Rejected, read_header
from tests.test_reliability_input import CHARSETS, encode, split_meta, synthetic_nm

START = dt.datetime(2026, 3, 2, 9, 0)
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]


def _ct_slice() -> Dataset:
    study = nm.StudyInfo(generate_uid(), START, accession="SYNHDR", description="header (synthetic)")
    (ds,) = build_ct_series(
        np.zeros((1, 32, 32)),
        patient=nm.Patient("SYNHDR01", "SYNTHETIC^HEADER", dt.date(1970, 1, 1), "M"),
        study=study,
        series_uid=generate_uid(),
        series_number=1,
        series_description="CT (synthetic)",
        acquired=START,
        frame_of_reference_uid=generate_uid(),
    )
    return ds


def _whole_body() -> Dataset:
    ds = synthetic_nm()
    ds.NumberOfFrames = 2
    ds.PixelData = np.arange(2 * 16 * 16, dtype=np.uint16).tobytes()
    return ds


def _save(ds: Dataset, syntax: str) -> bytes:
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    return encode(ds, syntax)


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("build", [synthetic_nm, _whole_body, _ct_slice])
def test_the_header_reads_as_pydicom_reads_the_whole_data_set(build: object, syntax: str) -> None:
    ds = build()  # type: ignore[operator]
    data = _save(ds, syntax)
    header = read_header(data, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    full = dcmread(BytesIO(data))
    assert (header.sop_class_uid, header.sop_instance_uid) == (full.SOPClassUID, full.SOPInstanceUID)
    assert (header.study_uid, header.series_uid) == (full.StudyInstanceUID, full.SeriesInstanceUID)
    assert header.patient_id == full.PatientID
    assert header.modality == full.Modality
    assert header.transfer_syntax == syntax


@pytest.mark.parametrize("charset", sorted(CHARSETS))
def test_a_patient_id_in_any_character_set_reads_as_pydicom_reads_it(charset: str) -> None:
    ds = synthetic_nm(CHARSETS[charset], charset)
    ds.PatientID = CHARSETS[charset].split("^")[-1][:16]
    data = encode(ds)
    header = read_header(data, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert header.patient_id == dcmread(BytesIO(data)).PatientID


def _replace_vr(data: bytes, tag: tuple[int, int], vr: bytes) -> bytes:
    meta, body = split_meta(data)
    at = body.index(struct.pack("<HH", *tag))
    return meta + body[: at + 4] + vr + body[at + 6 :]


def _frames_written_as(ds: Dataset, value: bytes) -> bytes:
    """ds's bytes with its two-byte Number of Frames value replaced by `value` (an even length), unchecked."""
    meta, body = split_meta(encode(ds))
    at = body.index(struct.pack("<HH2sH", 0x0028, 0x0008, b"IS", 2))
    return meta + body[:at] + struct.pack("<HH2sH", 0x0028, 0x0008, b"IS", len(value)) + value + body[at + 10 :]


def _refusal(ds: Dataset, data: bytes) -> Rejected:
    with pytest.raises(Rejected) as refused:
        read_header(data, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    return refused.value


def test_rows_written_in_another_vr_is_refused_as_undecodable() -> None:
    ds = synthetic_nm()
    refusal = _refusal(ds, _replace_vr(encode(ds), (0x0028, 0x0010), b"SS"))
    assert refusal.status == CANNOT_UNDERSTAND
    assert "Rows is encoded as SS" in refusal.reason


def test_a_number_of_frames_that_is_not_a_number_is_refused() -> None:
    ds = _whole_body()
    refusal = _refusal(ds, _frames_written_as(ds, b"x2"))
    assert refusal.status == DATASET_MISMATCH
    assert "Number of Frames is not a number" in refusal.reason


def test_rows_of_the_wrong_length_is_refused() -> None:
    ds = synthetic_nm()
    meta, body = split_meta(encode(ds))
    at = body.index(struct.pack("<HH", 0x0028, 0x0010))
    # Rows as two unsigned shorts (a length of 4): the data set stays in step, the value is not one number
    damaged = meta + body[:at] + struct.pack("<HH2sHHH", 0x0028, 0x0010, b"US", 4, 16, 16) + body[at + 10 :]
    refusal = _refusal(ds, damaged)
    assert refusal.status == DATASET_MISMATCH
    assert "Rows holds 4 bytes" in refusal.reason


def test_a_whole_number_of_frames_written_as_a_decimal_is_read() -> None:
    ds = _whole_body()
    header = read_header(_frames_written_as(ds, b"2.0 "), str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    refusal = _refusal(ds, _frames_written_as(ds, b"3.0 "))  # three frames declared, two arrived
    assert "Pixel Data holds" in refusal.reason
