"""A full disk: the spool on a 4 MiB tmpfs made for the test. New instances are refused with Out of Resources
(0xA700), the node keeps running, nothing already accepted is damaged, and storing resumes when space returns."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from scintnode.config import NodeSettings
from scintnode.db import Database, Instance
from scintnode.receive import OUT_OF_RESOURCES, Receiver
from scintnode.spool import Spool
from tests.test_reliability_input import encode, send_raw, synthetic_nm

SUCCESS = 0x0000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def start(tmp_path: Path, spool_root: Path, reserve: int) -> Receiver:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")  # the index lives elsewhere: this is about the spool
    db.create_schema()
    receiver = Receiver(db, Spool(spool_root, min_free_bytes=reserve), NodeSettings(bind_address="127.0.0.1", port=0))
    receiver.start()
    return receiver


def fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def assert_accepted_intact(receiver: Receiver, expected: int) -> None:
    with receiver.db.session() as session:
        rows = session.scalars(select(Instance)).all()
    assert len(rows) == expected
    for row in rows:
        assert hashlib.sha256(receiver.spool.absolute(row.path).read_bytes()).hexdigest() == row.sha256


def test_the_reserve_refuses_with_0xA700_and_storing_resumes_when_space_returns(
    small_disk: Path, tmp_path: Path
) -> None:
    receiver = start(tmp_path, small_disk / "spool", reserve=256 * 1024)
    try:
        assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS
        filler = fill(small_disk, leave=(256 + 40) * 1024)
        statuses = [send_raw(receiver.port, encode(synthetic_nm()), tmp_path) for _ in range(30)]
        accepted = statuses.count(SUCCESS)
        assert statuses[accepted:] == [OUT_OF_RESOURCES] * (len(statuses) - accepted)  # refused once full, and on
        assert accepted < len(statuses)
        assert_accepted_intact(receiver, 1 + accepted)
        filler.unlink()  # space returns
        assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS
        assert_accepted_intact(receiver, 2 + accepted)
    finally:
        receiver.stop()


def test_a_disk_that_really_runs_out_refuses_with_0xA700_and_leaves_no_partial_file(
    small_disk: Path, tmp_path: Path
) -> None:
    receiver = start(tmp_path, small_disk / "spool", reserve=0)  # no reserve: the write itself fails (ENOSPC)
    try:
        assert send_raw(receiver.port, encode(synthetic_nm()), tmp_path) == SUCCESS
        filler = fill(small_disk, leave=0)
        big = synthetic_nm()
        big.Rows = big.Columns = 256
        big.PixelData = b"\1\0" * (256 * 256)
        assert send_raw(receiver.port, encode(big), tmp_path) == OUT_OF_RESOURCES
        assert not list((small_disk / "spool" / "tmp").iterdir())
        assert_accepted_intact(receiver, 1)
        filler.unlink()
        assert send_raw(receiver.port, encode(big), tmp_path) == SUCCESS
        assert_accepted_intact(receiver, 2)
    finally:
        receiver.stop()


def test_a_restart_removes_the_temporary_files_of_writers_that_died_and_keeps_live_ones(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    writer = subprocess.Popen(["true"])
    writer.wait()  # its pid no longer runs
    tmp = tmp_path / "spool" / "tmp"
    dead = tmp / f"0123abcd-4567.dcm.{writer.pid}.7.part"
    live = tmp / f"89ef0123-4567.dcm.{os.getpid()}.8.part"
    # a container restarts its node under the same pid: a file older than the process is not its own
    previous_run = tmp / f"4567cdef-89ab.dcm.{os.getpid()}.9.part"
    foreign = tmp / "notes.part"  # no writer pid in its name: not ours to judge
    for path in (dead, live, previous_run, foreign):
        path.write_bytes(b"half an instance")
    os.utime(previous_run, (0, 0))  # written long before this process started
    Spool(tmp_path / "spool")
    assert not dead.exists() and not previous_run.exists()
    assert live.exists() and foreign.exists()
