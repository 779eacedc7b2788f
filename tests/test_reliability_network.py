"""Network faults: a sender killed mid-transfer, a sender that stalls mid-PDU, a peer that never releases and a
flood of idle connections. Resources stay bounded, timeouts end what hangs, and other senders are served."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import func, select

from scintnode.config import NodeSettings
from scintnode.db import Database, Instance
from scintnode.receive import Receiver
from scintnode.spool import Spool
from tests.test_reliability_input import encode, send_raw, synthetic_nm

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


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return big_file(tmp_path_factory.mktemp("big"))


def big_file(folder: Path) -> Path:
    ds = synthetic_nm()
    ds.Rows = ds.Columns = 2048
    ds.NumberOfFrames = 12
    ds.PixelData = os.urandom(2 * 2048 * 2048 * 12)  # 96 MiB in 4 KiB PDUs: long enough to interrupt
    path = folder / "big.dcm"
    path.write_bytes(encode(ds))
    return path


def storescu(port: int, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "storescu",
            "-aet",
            "FAULTCAM",
            "-aec",
            "SCINTNODE",
            "--max-send-pdu",
            "4096",
            "127.0.0.1",
            str(port),
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stored(receiver: Receiver) -> int:
    with receiver.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def acceptor_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("AcceptorThread"))


def test_a_sender_killed_mid_transfer_leaves_nothing_and_others_are_served(
    receiver: Receiver, tmp_path: Path, big: Path
) -> None:
    sender = storescu(receiver.port, big)
    try:
        wait_for(lambda: bool(receiver._associations), 20, "the association")
        time.sleep(0.2)  # some PDUs of the 32 MiB data set are in flight
        sender.kill()
    finally:
        sender.wait()
    wait_for(lambda: not receiver._associations, 10, "the aborted association to be cleaned up")
    assert stored(receiver) == 0 and not list((receiver.spool.root / "tmp").iterdir())
    assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS


def test_a_sender_that_stalls_mid_pdu_is_cut_off_by_the_timeout_while_others_are_served(
    receiver: Receiver, tmp_path: Path, big: Path
) -> None:
    sender = storescu(receiver.port, big)
    try:
        wait_for(lambda: bool(receiver._associations), 20, "the association")
        time.sleep(0.1)
        sender.send_signal(signal.SIGSTOP)  # stalls with a PDU half sent
        assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS  # served meanwhile
        took = wait_for(lambda: len(receiver._associations) == 0, TIMEOUT * 4 + 5, "the stalled sender cut off")
    finally:
        sender.kill()
        sender.wait()
    assert took < TIMEOUT * 4 + 5
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
        assert threading.active_count() - baseline_threads <= 2 * 20 + 5  # an association and its DUL thread each
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
