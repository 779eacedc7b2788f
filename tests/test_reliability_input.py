"""Bad input, from files and over the wire: each broken instance gets the right C-STORE status and one clear
log line, nothing of it is stored, and the node goes on storing good instances.

The broken instances are built byte by byte from a synthetic NM image and sent as they are (pynetdicom
streams the bytes after the File Meta unchanged), so the node sees exactly what a broken modality sends."""

from __future__ import annotations

import datetime as dt
import logging
import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, _config, build_context
from sqlalchemy import func, select

from scintnode.config import NodeSettings
from scintnode.db import Database, Instance
from scintnode.phantoms import nm
from scintnode.receive import Receiver
from scintnode.receive_header import CANNOT_UNDERSTAND, DATASET_MISMATCH, INVALID_UID, Rejected, read_header
from scintnode.spool import Spool

SUCCESS = 0x0000
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
CHARSETS = {  # Specific Character Set -> a synthetic name written in it
    "ISO_IR 100": "SYNTHÉTIQUE^Zoë",
    "ISO_IR 101": "SYNTETICKÝ^Łucja",
    "ISO_IR 109": "SINTETIKĦ^Ġorġ",
    "ISO_IR 110": "SÜNTEETILINE^Ļena",
    "ISO_IR 144": "СИНТЕТИЧЕСКИЙ^Анна",
    "ISO_IR 127": "اصطناعي^سارة",
    "ISO_IR 126": "ΣΥΝΘΕΤΙΚΟΣ^Ελένη",
    "ISO_IR 138": "סינתטי^שרה",
    "ISO_IR 148": "SENTETİK^Ayşe",
    "ISO_IR 166": "สังเคราะห์^มาลี",
    "ISO_IR 192": "SYNTHETIC^Ωmega^合成",
    "GB18030": "合成^病人",
    "GBK": "合成^患者",
    "ISO 2022 IR 87": "ゴウセイ^ハナコ",
    "ISO 2022 IR 149": "합성^환자",
    "ISO_IR 999": "SYNTHETIC^UNKNOWN CHARSET",  # an unknown character set: pydicom falls back, the node stores
}


def synthetic_nm(patient_name: str = "SYNTHETIC^BADINPUT", charset: str | None = None) -> Dataset:
    patient = nm.Patient("SYNBAD0001", patient_name, dt.date(1970, 1, 1), "F")
    start = dt.datetime(2026, 3, 2, 9, 0)
    study = nm.StudyInfo(generate_uid(), start, accession="SYNBAD", description="bad input (synthetic)")
    counts = np.random.default_rng(7).poisson(20, size=(1, 16, 16)).astype(np.uint16)
    ds = nm.build_nm_image(
        counts,
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
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The Part-10 bytes of ds in the given transfer syntax."""
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(
        buffer,
        enforce_file_format=True,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
    )
    return buffer.getvalue()


def split_meta(data: bytes) -> tuple[bytes, bytes]:
    """File Meta (preamble included) and the data set after it."""
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL follows the 128-byte preamble
    end = 144 + group_length
    return data[:end], data[end:]


def with_meta(ds: Dataset, body: bytes, syntax: str) -> bytes:
    """Part-10 bytes: a File Meta naming ds's SOP class, instance and `syntax`, then `body` unchanged."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    holder = Dataset()
    holder.file_meta = meta
    buffer = BytesIO()
    holder.save_as(buffer, enforce_file_format=True)
    return split_meta(buffer.getvalue())[0] + body


def element_at(body: bytes, tag: tuple[int, int]) -> int:
    return body.index(struct.pack("<HH", *tag))


def truncated(ds: Dataset) -> bytes:
    data = encode(ds)
    meta, body = split_meta(data)
    return meta + body[: element_at(body, (0x0020, 0x000D)) - 4]  # cut before the Study Instance UID


def wrong_vr_on_an_identifying_attribute(ds: Dataset) -> bytes:
    meta, body = split_meta(encode(ds))
    at = element_at(body, (0x0020, 0x000D))  # Study Instance UID, VR UI -> US: the UID text read as numbers
    return meta + body[: at + 4] + b"US" + body[at + 6 :]


def unknown_vr(ds: Dataset) -> bytes:
    meta, body = split_meta(encode(ds))
    at = element_at(body, (0x0010, 0x0010))
    return meta + body[: at + 4] + b"\x01\x02" + body[at + 6 :]


def missing_pixel_data(ds: Dataset) -> bytes:
    del ds.PixelData
    return encode(ds)


def short_pixel_data(ds: Dataset) -> bytes:
    ds.PixelData = ds.PixelData[:100]
    return encode(ds)


def rows_larger_than_the_pixels(ds: Dataset) -> bytes:
    ds.Rows = 512
    return encode(ds)


def zero_columns(ds: Dataset) -> bytes:
    ds.Columns = 0
    return encode(ds)


def huge_declared_length_in_the_header(ds: Dataset) -> bytes:
    meta, body = split_meta(encode(ds))
    at = element_at(body, (0x0008, 0x0020))  # Study Date, short form: 2-byte length
    return meta + body[: at + 6] + struct.pack("<H", 0xFFF0) + body[at + 8 :]


def huge_declared_pixel_length(ds: Dataset) -> bytes:
    data = encode(ds)
    at = data.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    return data[: at + 8] + struct.pack("<I", 0xFFFFFFF0) + data[at + 12 :]


def path_characters_in_a_uid(ds: Dataset) -> bytes:
    ds.SeriesInstanceUID = "1.2.3/../../../etc/passwd"
    return encode(ds)


def implicit_data_in_an_explicit_context(ds: Dataset) -> bytes:
    body = split_meta(encode(ds, ImplicitVRLittleEndian))[1]
    return with_meta(ds, body, ExplicitVRLittleEndian)


def big_endian_data_in_a_little_endian_context(ds: Dataset) -> bytes:
    body = split_meta(encode(ds, ExplicitVRBigEndian))[1]
    return with_meta(ds, body, ExplicitVRLittleEndian)


def native_pixels_in_a_jpeg_context(ds: Dataset) -> bytes:
    body = split_meta(encode(ds))[1]
    return with_meta(ds, body, JPEGBaseline8Bit)


def deeply_nested_sequences(ds: Dataset, depth: int = 5000) -> bytes:
    meta, body = split_meta(encode(ds))
    # (0008,1140) SQ of undefined length, one item of undefined length, holding the next sequence...
    opening = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    at = element_at(body, (0x0008, 0x0016))
    return meta + body[:at] + opening * depth + closing * depth + body[at:]


Case = Callable[[Dataset], bytes]
BAD_CASES: dict[str, tuple[Case, int]] = {
    "truncated file": (truncated, DATASET_MISMATCH),
    "identifying attribute with the wrong VR": (wrong_vr_on_an_identifying_attribute, INVALID_UID),
    # pydicom reads on past an unknown VR and loses step: what follows is missing
    "unknown VR": (unknown_vr, DATASET_MISMATCH),
    "missing pixel data": (missing_pixel_data, DATASET_MISMATCH),
    "short pixel data": (short_pixel_data, DATASET_MISMATCH),
    "rows larger than the pixel data": (rows_larger_than_the_pixels, DATASET_MISMATCH),
    "zero columns": (zero_columns, DATASET_MISMATCH),
    "huge declared length in the header": (huge_declared_length_in_the_header, DATASET_MISMATCH),
    "huge declared pixel data length": (huge_declared_pixel_length, DATASET_MISMATCH),
    "path characters in a UID": (path_characters_in_a_uid, INVALID_UID),
    "implicit VR data in an explicit VR context": (implicit_data_in_an_explicit_context, CANNOT_UNDERSTAND),
    "big endian data in a little endian context": (big_endian_data_in_a_little_endian_context, CANNOT_UNDERSTAND),
    "native pixels in a JPEG context": (native_pixels_in_a_jpeg_context, CANNOT_UNDERSTAND),
    "deeply nested sequences": (deeply_nested_sequences, CANNOT_UNDERSTAND),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_a_broken_file_is_refused_with_the_right_status(name: str) -> None:
    build, status = BAD_CASES[name]
    ds = synthetic_nm()
    with pytest.raises(Rejected) as caught:
        read_header(build(ds), NM_STORAGE, str(ds.SOPInstanceUID))
    assert caught.value.status == status, caught.value.reason
    assert caught.value.reason and "Rejected" not in caught.value.reason  # our own refusal, not wrapped again


@pytest.mark.parametrize("charset", sorted(CHARSETS))
def test_text_in_every_character_set_is_accepted(charset: str) -> None:
    ds = synthetic_nm(CHARSETS[charset], charset)
    syntax = ExplicitVRLittleEndian
    header = read_header(encode(ds, syntax), NM_STORAGE, str(ds.SOPInstanceUID))
    assert header.sop_instance_uid == ds.SOPInstanceUID


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    settings = NodeSettings(ae_title="SCINTNODE", bind_address="127.0.0.1", port=0, network_timeout_seconds=10)
    rx = Receiver(db, Spool(tmp_path / "spool"), settings)
    rx.start()
    yield rx
    rx.stop()
    db.dispose()


def send_raw(port: int, data: bytes, folder: Path) -> int:
    """Send Part-10 bytes as they are, over a new association; the C-STORE status."""
    path = folder / f"{generate_uid()}.dcm"
    path.write_bytes(data)
    meta = read_file_meta_info(path)
    ae = AE(ae_title="BADCAM")
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="SCINTNODE")
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the bytes after the File Meta unchanged
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def stored_count(receiver: Receiver) -> int:
    with receiver.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_broken_instances_over_the_wire_get_their_status_a_log_line_and_leave_the_node_working(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scintnode")
    for name, (build, status) in sorted(BAD_CASES.items()):
        ds = synthetic_nm()
        caplog.clear()
        assert send_raw(receiver.port, build(ds), tmp_path) == status, name
        lines = [r.getMessage() for r in caplog.records if "rejected instance" in r.getMessage()]
        assert len(lines) == 1 and f"(status 0x{status:04X})" in lines[0], (name, lines)
        # the node goes on: a good instance right after is stored
        good = synthetic_nm()
        assert send_raw(receiver.port, encode(good), tmp_path) == SUCCESS, name
    assert stored_count(receiver) == len(BAD_CASES)
    assert not list((receiver.spool.root / "tmp").iterdir())  # no partial files left behind


def test_every_character_set_over_the_wire_is_stored(receiver: Receiver, tmp_path: Path) -> None:
    for charset, name in CHARSETS.items():
        assert send_raw(receiver.port, encode(synthetic_nm(name, charset)), tmp_path) == SUCCESS, charset
    assert stored_count(receiver) == len(CHARSETS)


def test_an_unknown_sop_class_is_refused_at_negotiation_and_the_node_serves_on(
    receiver: Receiver, tmp_path: Path
) -> None:
    ae = AE(ae_title="BADCAM")
    ae.requested_contexts = [build_context("1.2.826.0.1.3680043.8.498.999.1", ExplicitVRLittleEndian)]
    ae.add_requested_context(NM_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert assoc.is_established
    try:
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [NM_STORAGE]
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == ["1.2.826.0.1.3680043.8.498.999.1"]
    finally:
        assoc.release()
    assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS
