"""Network faults: a sender cut off mid-transfer, a sender that stalls mid-PDU, a peer that never releases and a
flood of idle connections. Resources stay bounded, timeouts end what hangs, and other senders are served."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import func, select

from scintnode.config import NodeSettings
from scintnode.db import Database, Instance
from scintnode.receive import Receiver
from scintnode.spool import Spool
from tests import raw_dicom
from tests.test_reliability_input import encode, send_raw, split_meta, synthetic_nm

SUCCESS = 0x0000
TIMEOUT = 2.0  # the node's network timeout in these tests


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    settings = NodeSettings(
        bind_address="127.0.0.1", port=0, network_timeout_seconds=TIMEOUT, max_connections=20, max_pdu=4096
    )
    rx = Receiver(db, Spool(tmp_path / "spool"), settings)
    rx.start()
    yield rx
    rx.stop()
    db.dispose()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} not within {timeout} s")


def stored(receiver: Receiver) -> int:
    with receiver.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def acceptor_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("scintnode-association"))


def test_a_sender_killed_mid_transfer_leaves_nothing_and_others_are_served(receiver: Receiver, tmp_path: Path) -> None:
    # a plain socket cut off after half the data set: deterministic, where killing storescu after a sleep
    # races a receiver that takes a whole 96 MiB in a fraction of a second
    ds = synthetic_nm()
    sock = _start_store(receiver, ds)
    data = split_meta(encode(ds))[1]
    sock.sendall(raw_dicom.pdv(1, raw_dicom.DATA_SET_MORE, data[: len(data) // 2]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, as a killed process
    sock.close()
    wait_for(lambda: not receiver._associations, 10, "the aborted association to be cleaned up")
    assert stored(receiver) == 0 and not list((receiver.spool.root / "tmp").iterdir())
    assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS


def _start_store(receiver: Receiver, ds: Dataset) -> socket.socket:
    """A raw association that has sent a C-STORE request's command, and nothing of its data set yet."""
    sock = raw_dicom.associate(receiver.port, str(ds.SOPClassUID), "1.2.840.10008.1.2.1")
    command = raw_dicom.command(0x0001, str(ds.SOPClassUID), str(ds.SOPInstanceUID), has_data_set=True)
    sock.sendall(raw_dicom.pdv(1, raw_dicom.COMMAND_LAST, command))
    wait_for(lambda: bool(receiver._associations), 20, "the association")
    return sock


def test_a_sender_that_stalls_mid_pdu_is_cut_off_by_the_timeout_while_others_are_served(
    receiver: Receiver, tmp_path: Path
) -> None:
    ds = synthetic_nm()
    with _start_store(receiver, ds) as sock:
        half = raw_dicom.pdv(1, raw_dicom.DATA_SET_MORE, split_meta(encode(ds))[1])
        sock.sendall(half[: len(half) // 2])  # then nothing: the PDU stays half sent
        assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS  # served meanwhile
        took = wait_for(lambda: len(receiver._associations) == 0, TIMEOUT * 4 + 5, "the stalled sender cut off")
        assert raw_dicom.read_pdu(sock)[0] == raw_dicom.A_ABORT  # told, not just dropped
    assert TIMEOUT * 0.5 <= took < TIMEOUT * 4 + 5
    assert stored(receiver) == 1


def test_a_peer_that_never_releases_is_ended_by_the_idle_timeout(receiver: Receiver, tmp_path: Path) -> None:
    ae = AE(ae_title="IDLECAM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.20")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SCINTNODE")
    assert assoc.is_established
    assert int(assoc.send_c_store(synthetic_nm()).Status) == SUCCESS
    took = wait_for(lambda: not receiver._associations, TIMEOUT * 4 + 5, "the idle association ended")
    assert took >= TIMEOUT * 0.5
    wait_for(lambda: not assoc.is_established, 10, "the peer to see the abort")
    assert stored(receiver) == 1


def test_a_flood_of_idle_connections_is_bounded_and_drains(receiver: Receiver, tmp_path: Path) -> None:
    baseline_threads = threading.active_count()
    few = [socket.create_connection(("127.0.0.1", receiver.port)) for _ in range(5)]
    try:  # below the limit: others are still served at once
        assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS
    finally:
        for sock in few:
            sock.close()
    # the node notices closed sockets on its own schedule; start the flood from a clean count
    wait_for(lambda: receiver.open_connections == 0, TIMEOUT * 4 + 5, "the first connections to close")
    flood = []
    try:
        for _ in range(100):
            flood.append(socket.create_connection(("127.0.0.1", receiver.port)))
        time.sleep(0.5)
        assert receiver.open_connections <= 20
        assert threading.active_count() - baseline_threads <= 20 + 5  # one thread per connection
        closed = 0
        for sock in flood:  # the connections over the limit were closed at once
            sock.settimeout(0.01)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        assert closed >= 50
        wait_for(lambda: receiver.open_connections == 0, TIMEOUT * 4 + 5, "idle connections to time out")
    finally:
        for sock in flood:
            sock.close()
    assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS
    wait_for(lambda: acceptor_threads() == 0, 10, "association threads to end")
