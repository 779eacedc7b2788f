"""The Storage SCP: what is answered with success is on disk and in the index; bad input gets the right status."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from sqlalchemy import select

from scintnode.config import NodeSettings
from scintnode.db import Database, Event, Instance, Series, utcnow
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.receive import OUT_OF_RESOURCES, Receiver
from scintnode.receive_header import CANNOT_UNDERSTAND, DATASET_MISMATCH, INVALID_UID, Rejected, read_header
from scintnode.retention import purge_expired
from scintnode.spool import Spool
from tests.conftest import NMFactory


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    settings = NodeSettings(ae_title="SCINTNODE", bind_address="127.0.0.1", port=0, allowed_callers=["GOODCAM"])
    rx = Receiver(db, Spool(tmp_path / "spool"), settings)
    rx.start()
    yield rx
    rx.stop()
    db.dispose()


def storescu(port: int, *files: Path, calling: str = "GOODCAM") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-R", "-aet", calling, "-aec", "SCINTNODE", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
        check=False,
    )


def send_file(port: int, path: Path) -> int:
    """Send a file as stored (pynetdicom reads only its File Meta) and return the C-STORE status."""
    ds_meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title="GOODCAM")
    ae.add_requested_context(str(ds_meta.MediaStorageSOPClassUID), str(ds_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="SCINTNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def test_stored_instance_is_on_disk_and_indexed_with_its_sender(receiver: Receiver, nm_file: NMFactory) -> None:
    path = nm_file()
    result = storescu(receiver.port, path)
    assert result.returncode == 0, result.stderr
    ds = dcmread(path)
    with receiver.db.session() as session:
        row = session.get(Instance, ds.SOPInstanceUID)
        assert row is not None
        assert (row.calling_ae, row.peer_address, row.modality) == ("GOODCAM", "127.0.0.1", "NM")
        stored = receiver.spool.absolute(row.path).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row.sha256
        assert dcmread(receiver.spool.absolute(row.path)).PixelData == ds.PixelData
        # spool files hold patient data: owner only
        assert stat.S_IMODE(receiver.spool.absolute(row.path).stat().st_mode) == 0o600
        assert session.get(Series, ds.SeriesInstanceUID).instance_count == 1  # type: ignore[union-attr]
        kinds = session.scalars(select(Event.kind).where(Event.study_uid == ds.StudyInstanceUID)).all()
        assert kinds == ["received"]


def test_release_is_recorded_on_the_series(receiver: Receiver, nm_file: NMFactory) -> None:
    path = nm_file()
    assert storescu(receiver.port, path).returncode == 0
    series_uid = dcmread(path).SeriesInstanceUID
    with receiver.db.session() as session:
        assert session.get(Series, series_uid).released_at is not None  # type: ignore[union-attr]


def test_uid_text_never_becomes_a_path(receiver: Receiver, nm_file: NMFactory) -> None:
    path = nm_file()
    assert storescu(receiver.port, path).returncode == 0
    with receiver.db.session() as session:
        row = session.scalars(select(Instance)).one()
    assert row.sop_instance_uid not in row.path and row.study_uid not in row.path


def _written_inputs(spool: Spool) -> set[str]:
    """The inputs' files that hold data (a free slot is an empty file)."""
    slots = spool.root / "inputs" / "slots"
    return {str(p.relative_to(spool.root)) for p in slots.rglob("*.dcm") if p.stat().st_size}


def test_identical_duplicate_is_a_no_op_and_changed_one_is_kept(receiver: Receiver, nm_file: NMFactory) -> None:
    path = nm_file()
    assert storescu(receiver.port, path, path).returncode == 0
    ds = dcmread(path)
    with receiver.db.session() as session:
        first = session.get(Instance, ds.SOPInstanceUID)
        assert first is not None and len(session.scalars(select(Instance)).all()) == 1
        first_path = first.path
    assert _written_inputs(receiver.spool) == {first_path}  # the second copy's slot is removed
    ds.SeriesDescription = "THYROID ANT corrected (synthetic)"
    ds.save_as(path, enforce_file_format=True)
    assert storescu(receiver.port, path).returncode == 0
    with receiver.db.session() as session:
        row = session.get(Instance, ds.SOPInstanceUID)
        assert row is not None and row.path != first_path
        assert receiver.spool.absolute(first_path).exists() and receiver.spool.absolute(row.path).exists()
        assert "replaced" in session.scalars(select(Event.kind)).all()


def test_retention_removes_a_replaced_first_copy_once_its_replacement_is_old(
    receiver: Receiver, nm_file: NMFactory
) -> None:
    path = nm_file()
    assert storescu(receiver.port, path).returncode == 0
    ds = dcmread(path)
    ds.SeriesDescription = "THYROID ANT corrected (synthetic)"
    ds.save_as(path, enforce_file_format=True)
    assert storescu(receiver.port, path).returncode == 0
    with receiver.db.session() as session:
        row = session.get(Instance, ds.SOPInstanceUID)
        assert row is not None
        current = row.path
    assert len(_written_inputs(receiver.spool)) == 2

    # the new file is not routed here, so retention keeps it; only the first file's age is in question
    assert purge_expired(receiver.db, receiver.spool, 30, now=utcnow() + dt.timedelta(days=29)) == 0
    assert len(_written_inputs(receiver.spool)) == 2
    assert purge_expired(receiver.db, receiver.spool, 30, now=utcnow() + dt.timedelta(days=31)) == 1
    assert _written_inputs(receiver.spool) == {current}
    assert purge_expired(receiver.db, receiver.spool, 30, now=utcnow() + dt.timedelta(days=32)) == 0
    with receiver.db.session() as session:
        assert "replaced" in session.scalars(select(Event.kind)).all()  # the audit trail keeps the event


def test_a_restart_removes_inputs_written_but_never_indexed_and_keeps_a_replaced_first_copy(
    tmp_path: Path, receiver: Receiver, nm_file: NMFactory
) -> None:
    path = nm_file()
    assert storescu(receiver.port, path, nm_file()).returncode == 0
    ds = dcmread(path)
    ds.SeriesDescription = "THYROID ANT corrected (synthetic)"
    ds.save_as(path, enforce_file_format=True)
    assert storescu(receiver.port, path).returncode == 0  # a changed re-send: the first copy stays
    kept = _written_inputs(receiver.spool)
    assert len(kept) == 3
    # what a node killed between a file's fsync and its index commit leaves: a file no row points at
    unindexed = receiver.spool.store_input(path.read_bytes()).path
    receiver.stop()
    receiver.spool.close()
    restarted = Receiver(receiver.db, Spool(tmp_path / "spool"), receiver.settings)
    restarted.start()
    try:
        assert _written_inputs(restarted.spool) == kept and unindexed not in kept
        assert storescu(restarted.port, nm_file()).returncode == 0
    finally:
        restarted.stop()
    with receiver.db.session() as session:
        assert {row.path for row in session.scalars(select(Instance))} | kept == _written_inputs(restarted.spool)


def test_caller_not_on_the_allow_list_is_refused(receiver: Receiver, nm_file: NMFactory) -> None:
    result = storescu(receiver.port, nm_file(), calling="STRANGER")
    assert result.returncode != 0
    assert "Rejected" in result.stderr or "rejected" in result.stderr.lower()
    echo = subprocess.run(
        ["echoscu", "-aet", "GOODCAM", "-aec", "SCINTNODE", "127.0.0.1", str(receiver.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    with receiver.db.session() as session:
        assert session.scalars(select(Instance)).all() == []


def echoscu(port: int, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-d", "-aet", "GOODCAM", "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_any_called_ae_title_is_answered_by_default(receiver: Receiver) -> None:
    result = echoscu(receiver.port, "OTHERNODE")
    assert result.returncode == 0, result.stderr


def test_a_sender_pointed_at_another_ae_title_is_refused_when_the_called_title_is_required(
    tmp_path: Path, nm_file: NMFactory
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    settings = NodeSettings(ae_title="SCINTNODE", bind_address="127.0.0.1", port=0, require_called_ae_title=True)
    rx = Receiver(db, Spool(tmp_path / "spool"), settings)
    rx.start()
    try:
        refused = echoscu(rx.port, "OTHERNODE")
        assert refused.returncode != 0
        assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
        assert storescu(rx.port, nm_file(), calling="GOODCAM").returncode == 0
        with db.session() as session:
            assert len(session.scalars(select(Instance)).all()) == 1
    finally:
        rx.stop()
        db.dispose()


def test_sop_class_that_does_not_match_the_request_is_refused(nm_file: NMFactory) -> None:
    # DCMTK and pynetdicom both take the request's SOP class from the data, so check the rule directly
    path = nm_file()
    ds = dcmread(path)
    with pytest.raises(Rejected) as caught:
        read_header(path.read_bytes(), CTImageStorage, str(ds.SOPInstanceUID))
    assert caught.value.status == DATASET_MISMATCH and "does not match" in caught.value.reason
    with pytest.raises(Rejected) as caught:
        read_header(path.read_bytes(), str(ds.SOPClassUID), "1.2.3.4")
    assert caught.value.status == DATASET_MISMATCH


def test_truncated_header_is_refused(receiver: Receiver, nm_file: NMFactory, tmp_path: Path) -> None:
    ds = dcmread(nm_file())
    ds.StudyDate = "20260302"
    bad = tmp_path / "broken.dcm"
    ds.save_as(bad, enforce_file_format=True)
    data = bytearray(bad.read_bytes())
    # explicit VR little endian: (0008,0020) 'DA' then a 2-byte length; declare far more than the file holds
    at = bytes(data).index(b"\x08\x00\x20\x00DA")
    data[at + 6 : at + 8] = (0xFFF0).to_bytes(2, "little")
    bad.write_bytes(bytes(data[: at + 200]))
    # pydicom reads up to the cut silently, so what it misses is the identifying attributes after it
    assert send_file(receiver.port, bad) == DATASET_MISMATCH
    with receiver.db.session() as session:
        assert session.scalars(select(Instance)).all() == []


def test_bytes_that_are_not_dicom_are_refused_as_not_understood(nm_file: NMFactory) -> None:
    path = nm_file()
    ds = dcmread(path)
    with pytest.raises(Rejected) as caught:
        read_header(b"\x00" * 50 + b"not dicom at all", str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert caught.value.status == CANNOT_UNDERSTAND


def test_uid_with_path_characters_is_refused(receiver: Receiver, nm_file: NMFactory, tmp_path: Path) -> None:
    ds = dcmread(nm_file())
    ds.StudyInstanceUID = "1.2.3/../../etc"
    bad = tmp_path / "pathuid.dcm"
    ds.save_as(bad, enforce_file_format=True)
    assert send_file(receiver.port, bad) == INVALID_UID


def test_full_spool_answers_out_of_resources_and_keeps_what_it_had(receiver: Receiver, nm_file: NMFactory) -> None:
    assert storescu(receiver.port, nm_file()).returncode == 0
    receiver.spool.min_free_bytes = receiver.spool.free_bytes() + 1  # as if the disk were full
    assert send_file(receiver.port, nm_file()) == OUT_OF_RESOURCES
    receiver.spool.min_free_bytes = 0
    assert storescu(receiver.port, nm_file()).returncode == 0
    with receiver.db.session() as session:
        rows = session.scalars(select(Instance)).all()
        assert len(rows) == 2
        assert all(receiver.spool.absolute(r.path).exists() for r in rows)


def test_the_node_names_itself_in_the_association_and_in_the_files_it_spools(
    receiver: Receiver, nm_file: NMFactory
) -> None:
    path = nm_file()
    ae = AE(ae_title="GOODCAM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert assoc.is_established
    try:
        accepted_by = (assoc.acceptor.implementation_class_uid, assoc.acceptor.implementation_version_name)
        assert int(assoc.send_c_store(path).Status) == 0
    finally:
        assoc.release()
    assert accepted_by == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    with receiver.db.session() as session:
        row = session.get(Instance, dcmread(path).SOPInstanceUID)
        assert row is not None
        meta = dcmread(receiver.spool.absolute(row.path), stop_before_pixels=True).file_meta
    assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == accepted_by
