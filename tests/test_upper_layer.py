"""The receiver's DICOM Upper Layer: negotiation, PDU reassembly, responses, limits and protocol errors.

Real peers throughout: pynetdicom and DCMTK as requestors, and raw sockets for what no well-behaved
requestor sends."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import NuclearMedicineImageStorage, Verification
from sqlalchemy import select

from scintnode import dimse_command
from scintnode.config import NodeSettings
from scintnode.db import Database, Instance
from scintnode.receive import Receiver
from scintnode.receive_header import DATASET_MISMATCH
from scintnode.requestor import associate
from scintnode.spool import Spool
from scintnode.upper_layer import TOLERATED_PDU
from tests import raw_dicom
from tests.conftest import NMFactory
from tests.test_reliability_input import encode, split_meta, synthetic_nm

ReceiverFactory = Callable[..., Receiver]


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[ReceiverFactory]:
    started: list[tuple[Receiver, Database]] = []

    def make(**overrides: object) -> Receiver:
        db = Database(f"sqlite:///{tmp_path / f'index{len(started)}.db'}")
        db.create_schema()
        settings = NodeSettings(ae_title="SCINTNODE", bind_address="127.0.0.1", port=0, **overrides)  # type: ignore[arg-type]
        receiver = Receiver(db, Spool(tmp_path / f"spool{len(started)}"), settings)
        receiver.start()
        started.append((receiver, db))
        return receiver

    yield make
    for receiver, db in started:
        receiver.stop()
        db.dispose()


def _requestor(max_pdu: int = 16384) -> AE:
    ae = AE(ae_title="GOODCAM")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(NuclearMedicineImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    return ae


def _indexed(receiver: Receiver) -> list[str]:
    with receiver.db.session() as session:
        return list(session.scalars(select(Instance.sop_instance_uid)).all())


def test_fragmented_messages_are_reassembled_and_stored_byte_for_byte(
    make_receiver: ReceiverFactory, nm_file: NMFactory
) -> None:
    receiver = make_receiver(max_pdu=4096)  # a 128x128 image arrives in ~9 P-DATA PDUs
    path = nm_file(size=128)
    ds = dcmread(path)
    assoc = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 4096
    assert int(assoc.send_c_store(ds).Status) == 0x0000
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()
    with receiver.db.session() as session:
        row = session.get(Instance, ds.SOPInstanceUID)
        assert row is not None
        stored = dcmread(receiver.spool.absolute(row.path))
    assert stored.PixelData == ds.PixelData
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.PatientID == ds.PatientID


def test_a_refused_instance_says_why_in_the_error_comment(make_receiver: ReceiverFactory, nm_file: NMFactory) -> None:
    receiver = make_receiver()
    ds = dcmread(nm_file())
    del ds.PixelData  # an image with Rows and Columns but no pixels
    assoc = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert int(status.Status) == DATASET_MISMATCH
    assert "no Pixel Data" in str(status.ErrorComment)
    assert len(str(status.ErrorComment)) <= 64
    assert _indexed(receiver) == []


def test_storescu_sees_success_and_the_node_negotiates_its_proposal(
    make_receiver: ReceiverFactory, nm_file: NMFactory
) -> None:
    receiver = make_receiver()
    files = [nm_file() for _ in range(3)]
    result = subprocess.run(
        [
            "storescu",
            "-R",
            "-xi",
            "-aet",
            "GOODCAM",
            "-aec",
            "SCINTNODE",
            "127.0.0.1",
            str(receiver.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(_indexed(receiver)) == sorted(str(dcmread(p).SOPInstanceUID) for p in files)


def test_associations_beyond_the_limit_are_rejected_as_transient(make_receiver: ReceiverFactory) -> None:
    receiver = make_receiver(max_associations=1)
    first = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert first.is_established
    second, rejection = associate(_requestor(), "127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert not second.is_established
    assert rejection is not None
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x02, 0x03, 0x02)
    first.release()
    third = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert third.is_established  # the place was given back at release
    third.release()


def test_a_released_association_gives_its_place_back_before_the_requestor_closes(
    make_receiver: ReceiverFactory,
) -> None:
    receiver = make_receiver(max_associations=1)
    with raw_dicom.associate(receiver.port, Verification) as sock:
        sock.sendall(raw_dicom.pdu(raw_dicom.A_RELEASE_RQ, b"\x00" * 4))
        assert raw_dicom.read_pdu(sock)[0] == raw_dicom.A_RELEASE_RP
        # the connection stays open, as it may for a moment on a sender that re-associates at once
        second, rejection = associate(_requestor(), "127.0.0.1", receiver.port, ae_title="SCINTNODE")
        assert rejection is None
        assert second.is_established
        second.release()


def test_an_idle_association_is_aborted_after_the_network_timeout(make_receiver: ReceiverFactory) -> None:
    receiver = make_receiver(network_timeout_seconds=0.5)
    assoc = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert receiver.open_connections == 0


# -- raw sockets: what no well-behaved requestor sends ------------------------------------------------------


def _request(field: int) -> bytes:
    return raw_dicom.command(field, Verification)


def _still_works(receiver: Receiver) -> None:
    assoc = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()


def test_an_operation_the_node_does_not_serve_is_answered_unrecognised(make_receiver: ReceiverFactory) -> None:
    receiver = make_receiver()
    with raw_dicom.associate(receiver.port, Verification) as sock:
        sock.sendall(
            raw_dicom.pdv(1, raw_dicom.COMMAND_LAST, _request(0x0020))
        )  # a C-FIND-RQ on the Verification context
        pdu_type, body = raw_dicom.read_pdu(sock)
    assert pdu_type == 0x04
    assert body[4:6] == b"\x01\x03"  # one PDV on context 1: a command's last fragment
    response = raw_dicom.elements(body[6:])
    assert int.from_bytes(response[0x0100], "little") == 0x8020  # C-FIND-RSP
    assert int.from_bytes(response[0x0120], "little") == 7  # to the request's message ID
    assert int.from_bytes(response[0x0900], "little") == dimse_command.UNRECOGNISED_OPERATION
    _still_works(receiver)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("unknown PDU type", raw_dicom.pdu(0x09, b"\x00" * 4)),
        ("P-DATA before association", raw_dicom.pdv(1, raw_dicom.COMMAND_LAST, _request(0x0030))),
        ("oversized PDU", struct.pack(">BBI", 0x01, 0, 1 << 30)),
        ("malformed A-ASSOCIATE-RQ", raw_dicom.pdu(0x01, b"\x00\x01" + b"\xff" * 60)),
    ],
)
def test_protocol_garbage_before_association_is_aborted_and_the_node_keeps_working(
    make_receiver: ReceiverFactory, name: str, data: bytes
) -> None:
    receiver = make_receiver()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(data)
        pdu_type, body = raw_dicom.read_pdu(sock)
        assert pdu_type == 0x07, name  # A-ABORT from the service provider
        assert body[2] == 0x02, name
        assert sock.recv(1) == b"", name  # and the connection is closed
    _still_works(receiver)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a context that was not accepted", raw_dicom.pdv(9, raw_dicom.COMMAND_LAST, _request(0x0030))),
        (
            "a command set that is not one",
            raw_dicom.pdv(1, raw_dicom.COMMAND_LAST, b"\x08\x00\x16\x00\x02\x00\x00\x00ab"),
        ),
        ("a data set with no command", raw_dicom.pdu(0x04, struct.pack(">IBB", 4, 1, 0x02) + b"\x00\x00")),
        ("a PDV longer than its PDU", raw_dicom.pdu(0x04, struct.pack(">IBB", 400, 1, 0x03) + b"\x00" * 4)),
        ("a second association request", raw_dicom.pdu(0x01, b"\x00" * 68)),
    ],
)
def test_protocol_errors_inside_an_association_abort_it_and_the_node_keeps_working(
    make_receiver: ReceiverFactory, name: str, data: bytes
) -> None:
    receiver = make_receiver()
    with raw_dicom.associate(receiver.port, Verification) as sock:
        sock.sendall(data)
        pdu_type, _ = raw_dicom.read_pdu(sock)
        assert pdu_type == 0x07, name
        assert sock.recv(1) == b"", name
    _still_works(receiver)
    assert receiver.open_connections <= 1  # the aborted connection's place is given back


def test_a_requestor_that_aborts_leaves_the_node_working(make_receiver: ReceiverFactory, nm_file: NMFactory) -> None:
    receiver = make_receiver()
    assoc = _requestor().associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert int(assoc.send_c_store(dcmread(nm_file())).Status) == 0x0000
    assoc.abort()
    _still_works(receiver)
    assert len(_indexed(receiver)) == 1  # what was acknowledged before the abort is kept


def test_a_pdu_over_the_advertised_maximum_is_served_up_to_a_bound(make_receiver: ReceiverFactory) -> None:
    receiver = make_receiver(max_pdu=1024)
    ds = synthetic_nm()
    data_set = split_meta(encode(ds))[1]
    assert 1024 < len(data_set) < TOLERATED_PDU  # one PDV, larger than the node asked for
    with raw_dicom.associate(receiver.port, str(ds.SOPClassUID), ExplicitVRLittleEndian) as sock:
        command = raw_dicom.command(0x0001, str(ds.SOPClassUID), str(ds.SOPInstanceUID), has_data_set=True)
        sock.sendall(raw_dicom.pdv(1, raw_dicom.COMMAND_LAST, command))
        sock.sendall(raw_dicom.pdv(1, raw_dicom.DATA_SET_LAST, data_set))
        pdu_type, body = raw_dicom.read_pdu(sock)
        assert pdu_type == raw_dicom.P_DATA_TF
        assert int.from_bytes(raw_dicom.elements(body[6:])[0x0900], "little") == 0x0000
        sock.sendall(struct.pack(">BBI", raw_dicom.P_DATA_TF, 0, TOLERATED_PDU + 1))  # beyond the bound
        assert raw_dicom.read_pdu(sock)[0] == raw_dicom.A_ABORT
    assert _indexed(receiver) == [str(ds.SOPInstanceUID)]
