"""The spool's durability rules: an input goes into a slot whose name was made durable ahead (one fsync, no
folder fsync), slots are never handed out twice, across threads and restarts, and one process holds them; an
output gets its final name before its fsync and only a durable copy ever replaces a file under that name."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from scintnode import spool_slots
from scintnode.spool import Spool
from scintnode.spool_slots import SpoolInUse

T = TypeVar("T")


def _syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path | int]]:
    """Every fsync from now on, in order: ("dir", path) or ("file", the file's inode)."""
    seen: list[tuple[str, Path | int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            seen.append(("dir", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        else:
            seen.append(("file", status.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_an_input_costs_one_fsync_in_a_slot_whose_name_was_made_durable_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = _syncs(monkeypatch)
    spool = Spool(tmp_path / "spool")
    slots = spool.root / "inputs" / "slots"
    first = slots / "00000000"
    assert syncs[-3:] == [("dir", spool.root / "inputs"), ("dir", first), ("dir", slots)]  # slots/, its slots
    assert len(list(first.iterdir())) == spool_slots.SLOTS_PER_FOLDER
    syncs.clear()
    stored = [spool.store_input(f"instance {n}".encode()) for n in range(5)]
    paths = [spool.absolute(file.path) for file in stored]
    assert syncs == [("file", path.stat().st_ino) for path in paths]  # no folder fsync, no temporary
    assert [path.parent for path in paths] == [first] * 5 and len(set(paths)) == 5
    assert [path.read_bytes() for path in paths] == [f"instance {n}".encode() for n in range(5)]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in paths)
    assert list((spool.root / "tmp").iterdir()) == []


def _spool_with_small_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_folder: int, refill_below: int
) -> Spool:
    """A spool whose slot folders hold `per_folder` slots, one added when fewer than `refill_below` are left."""
    monkeypatch.setattr(spool_slots, "SLOTS_PER_FOLDER", per_folder)
    monkeypatch.setattr(spool_slots, "REFILL_BELOW", refill_below)
    return Spool(tmp_path / "spool")


def test_slots_are_added_before_they_run_out_and_no_slot_serves_two_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool_with_small_folders(tmp_path, monkeypatch, 16, 4)
    stored: list[str] = []

    def send(sender: int) -> None:
        for n in range(25):
            stored.append(spool.store_input(f"{sender}-{n}".encode()).path)

    threads = [threading.Thread(target=send, args=(sender,)) for sender in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(stored)) == 100  # every input its own slot
    contents = sorted(spool.absolute(path).read_bytes() for path in stored)
    assert contents == sorted(f"{sender}-{n}".encode() for sender in range(4) for n in range(25))
    folders = sorted(path.name for path in (spool.root / "inputs" / "slots").iterdir() if path.is_dir())
    assert folders == [f"{n:08d}" for n in range(len(folders))] and len(folders) >= 7
    assert spool._slots.free_count() >= 4  # refilled before it ran low, not when it ran out


def test_slots_that_cannot_be_added_refuse_an_input_only_once_none_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool_with_small_folders(tmp_path, monkeypatch, 8, 4)

    def disk_full(self: spool_slots.SlotPool) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_slots.SlotPool, "_add_folder", disk_full)
    assert len({spool.store_input(b"x").path for _ in range(8)}) == 8  # each refill failed while slots were left
    with pytest.raises(OSError, match="No space"):
        spool.store_input(b"x")
    monkeypatch.undo()
    assert spool.store_input(b"x").path == "inputs/slots/00000001/0000.dcm"


def test_a_restarted_spool_goes_on_with_its_free_slots_and_lists_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    kept = [spool.store_input(b"kept %d" % n).path for n in range(3)]
    free = spool._slots.free_count()
    spool.close()
    syncs = _syncs(monkeypatch)
    again = Spool(tmp_path / "spool")
    # a run cut short while making a folder may have left names not yet durable: synced before any is used
    assert ("dir", spool.root / "inputs" / "slots" / "00000000") in syncs
    assert again.written_at_start == kept
    assert again._slots.free_count() == free
    assert again.store_input(b"next").path == "inputs/slots/00000000/0003.dcm"
    assert [again.absolute(path).read_bytes() for path in kept] == [b"kept 0", b"kept 1", b"kept 2"]


def test_one_process_at_a_time_holds_the_slots(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolInUse, match="one node per spool"):
        Spool(tmp_path / "spool")
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from scintnode.spool import Spool; Spool(__import__('pathlib').Path({str(spool.root)!r}))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.returncode != 0 and "SpoolInUse" in other.stderr
    spool.close()
    assert Spool(tmp_path / "spool").store_input(b"x").path.startswith("inputs/slots/")


def test_a_failed_write_spends_its_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        spool.store_input(b"lost")
    monkeypatch.undo()
    assert not spool.absolute("inputs/slots/00000000/0000.dcm").exists()  # never handed out again
    assert spool.store_input(b"kept").path == "inputs/slots/00000000/0001.dcm"


def test_removing_inputs_drops_emptied_folders_but_keeps_the_stage_and_slot_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool_with_small_folders(tmp_path, monkeypatch, 8, 2)
    inputs = spool.root / "inputs"
    stored = [spool.store_input(b"x").path for _ in range(8)]  # the first folder, every slot handed out
    old_layout = inputs / "0123456789abcdef" / "fedcba9876543210"  # an earlier release's study/series folders
    old_layout.mkdir(parents=True)
    (old_layout / "old.dcm").write_bytes(b"z")
    bucket = inputs / "ab"  # and the 256 bucket folders of the release after it
    bucket.mkdir()
    (bucket / "older.dcm").write_bytes(b"z")
    output = spool.store_output(b"sr", "1.2.3", "1.2.3.9")
    for relative in [*stored, output.path, "inputs/0123456789abcdef/fedcba9876543210/old.dcm", "inputs/ab/older.dcm"]:
        spool.remove(relative)
    assert sorted(path.name for path in inputs.iterdir()) == ["ab", "slots"]
    slot_folders = sorted(path.name for path in (inputs / "slots").iterdir() if path.is_dir())
    assert slot_folders == ["00000001"]  # the emptied first folder is gone, the one with free slots stays
    assert list((spool.root / "outputs").iterdir()) == []


def _at_each_file_fsync(monkeypatch: pytest.MonkeyPatch, look: Callable[[], T]) -> list[T]:
    """What `look` returns at each fsync of a file (folders' fsyncs are skipped), in order."""
    seen: list[T] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            seen.append(look())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def _spool_with_a_free_output_name(tmp_path: Path) -> tuple[Spool, Path]:
    """A spool, and the final name its test output gets, left free (the file was stored, then removed)."""
    spool = Spool(tmp_path / "spool")
    final = spool.absolute(spool.store_output(b"first", "1.2.3", "1.2.3.4.5").path)
    final.unlink()
    return spool, final


def test_a_new_output_has_its_name_before_its_fsync_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, final = _spool_with_a_free_output_name(tmp_path)
    seen = _at_each_file_fsync(monkeypatch, final.exists)
    stored = spool.store_output(b"first", "1.2.3", "1.2.3.4.5")
    assert seen == [True]  # one journal commit covers the data and the name
    assert spool.absolute(stored.path).read_bytes() == b"first"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert list((spool.root / "tmp").iterdir()) == []


def test_an_output_already_under_its_final_name_is_replaced_by_a_durable_copy_never_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a crash between a new name's link and its fsync can leave: the right size, lost content.
    spool = Spool(tmp_path / "spool")
    data = b"result bytes" * 100
    final = spool.absolute(spool.store_output(data, "1.2.3", "1.2.3.4.5").path)
    final.write_bytes(b"\0" * len(data))
    contents_at_fsync = _at_each_file_fsync(monkeypatch, final.read_bytes)
    stored = spool.store_output(data, "1.2.3", "1.2.3.4.5")
    assert contents_at_fsync == [b"\0" * len(data)]  # the old file stays until the new copy is durable
    assert spool.absolute(stored.path).read_bytes() == data
    assert list((spool.root / "tmp").iterdir()) == []


def _io_error() -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_a_failed_fsync_takes_back_the_new_name_and_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, final = _spool_with_a_free_output_name(tmp_path)
    _at_each_file_fsync(monkeypatch, _io_error)
    with pytest.raises(OSError):
        spool.store_output(b"first", "1.2.3", "1.2.3.4.5")
    assert not final.exists()  # nobody was told of it, and no file is left under a name it may not keep
    assert list((spool.root / "tmp").iterdir()) == []
    monkeypatch.undo()
    assert spool.absolute(spool.store_output(b"first", "1.2.3", "1.2.3.4.5").path).read_bytes() == b"first"


def test_a_failed_fsync_leaves_a_name_that_another_write_has_since_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, final = _spool_with_a_free_output_name(tmp_path)

    def replaced_then_failing() -> None:
        # the same result written again on another thread replaces the name before this write's fsync fails
        other = tmp_path / "other"
        other.write_bytes(b"first")
        os.replace(other, final)
        _io_error()

    _at_each_file_fsync(monkeypatch, replaced_then_failing)
    with pytest.raises(OSError):
        spool.store_output(b"first", "1.2.3", "1.2.3.4.5")
    assert final.read_bytes() == b"first"  # the other write's file is kept


def test_a_new_output_folder_has_its_parent_fsynced_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    syncs = _syncs(monkeypatch)
    output = spool.store_output(b"sr", "1.2.3", "1.2.3.9")  # outputs/<study>/: a new folder
    folders = [path for kind, path in syncs if kind == "dir"]
    assert folders == [spool.root / "outputs", spool.absolute(output.path).parent]  # its parent first, then the file's


def test_serve_refuses_a_spool_another_node_holds(tmp_path: Path) -> None:
    holder = Spool(tmp_path / "spool")
    (tmp_path / "rules").mkdir()
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{port: 0, bind_address: 127.0.0.1}}\nstorage: {{root: {holder.root}}}\n"
        f"rules_dir: {tmp_path / 'rules'}\nhttp: {{enabled: false}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "scintnode", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "in use by another scintnode (one node per spool)" in result.stderr
    holder.close()
