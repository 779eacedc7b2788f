"""The spool: where received instances and written results live on disk, one file per SOP instance.

An input is written into a slot (scintnode/spool_slots.py): an empty file whose name was made durable ahead, so
the file's fsync alone makes it durable, and nothing in the group commit has to sync a folder. Output paths
are built from hashes of the UIDs, never from UID text, so no sender can steer a path; each output is written
to a temporary name, given its final name, fsynced and its folder fsynced before anyone is told it exists, and a
file already under that name is only ever replaced by a copy already fsynced. A folder is made with its parent
fsynced. Inputs of earlier releases stay where they were, in 256 bucket folders by series (or study/series
folders before those)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from scintnode.spool_slots import DIR_MODE, FILE_MODE, SlotPool, fsync_dir

log = logging.getLogger(__name__)


class SpoolFull(OSError):
    """Less free space than the configured reserve: refuse new data rather than fill the disk."""


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the spool root
    sha256: str
    size: int


_BUCKETS = frozenset(f"{n:02x}" for n in range(256))  # inputs/<series digest's first 2 hex digits>, before slots


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class Spool:
    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        for sub in ("inputs", "outputs", "tmp"):
            _make_durable_folder(self.root / sub)
        self._inputs = self.root / "inputs"
        self._slots = SlotPool(self._inputs / "slots", "inputs/slots")
        self._folders: set[Path] = set()  # folders known to exist: saves a mkdir per file
        self._folders_lock = threading.Lock()
        self._sequence = 0  # with the pid, names each temporary file uniquely
        self._sweep_dead_writers_parts()

    @property
    def written_at_start(self) -> list[str]:
        """Inputs written into slots by an earlier run, in the slots it may not have indexed (spool_slots.py)."""
        return self._slots.written_at_start

    def close(self) -> None:
        """Let another process use the spool's input slots."""
        self._slots.close()

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def store_input(self, data: bytes) -> StoredFile:
        """Write an input durably into the next free slot: once this returns, its file and name are on disk."""
        self._check_space(len(data))
        relative = self._slots.take()
        try:
            # no O_CREAT: a slot that has gone is an error, never a new name that is not durable
            fd = os.open(self.absolute(relative), os.O_WRONLY | os.O_TRUNC)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.absolute(relative).unlink(missing_ok=True)  # spent: a slot is never handed out twice
            raise
        return StoredFile(relative, hashlib.sha256(data).hexdigest(), len(data))

    def store_output(self, data: bytes, study_uid: str, sop_uid: str) -> StoredFile:
        content = hashlib.sha256(data).hexdigest()
        relative = f"outputs/{_digest(study_uid)[:16]}/{_digest(sop_uid)[:32]}.dcm"
        self._write(relative, data)
        return StoredFile(relative, content, len(data))

    def remove(self, relative: str) -> None:
        path = self.absolute(relative)
        path.unlink(missing_ok=True)
        # drop emptied folders up to the stage folder (bucket folders stay), so retention leaves no husks; a slot
        # folder empties only once all its slots were handed out (a free slot is a file in it)
        for parent in path.parents:
            if parent in (self._inputs, self._slots.folder, self.root / "outputs", self.root):
                break
            if parent.parent == self._inputs and parent.name in _BUCKETS:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def _check_space(self, size: int) -> None:
        if self.min_free_bytes and self.free_bytes() - size < self.min_free_bytes:
            raise SpoolFull(f"spool {self.root} would drop below its reserve of {self.min_free_bytes} bytes")

    def _write(self, relative: str, data: bytes) -> None:
        self._check_space(len(data))
        final = self.absolute(relative)
        self._ensure_folder(final.parent)
        with self._folders_lock:
            self._sequence += 1
            tmp = self.root / "tmp" / f"{final.name}.{os.getpid()}.{self._sequence}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            _write_all(fd, data)
            # A new name is linked before the fsync, so one journal commit makes the data and the name
            # durable together (fsync first, and ext4 pays a second commit for the name). Nobody is told of
            # the file before this fsync and its folder's have returned.
            linked = _link_if_absent(tmp, final)
            try:
                os.fsync(fd)
            except OSError:
                if linked:
                    _unlink_if_same_file(final, fd)
                raise
            if not linked:
                # The name exists: a file written again, or one whose fsync a crash cut short. It is never
                # trusted, only replaced, and only by a copy already durable.
                os.replace(tmp, final)
        finally:
            os.close(fd)
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def _sweep_dead_writers_parts(self) -> None:
        """Remove the temporary files of writers that died mid-write (a crash, a kill, power loss).

        Nothing was acknowledged for them, so the sender still holds the data. A file is its writer's while
        a process with its pid runs and started before the file was written: a container restarts its node
        as pid 1 again, and that new pid 1 did not write the old run's files."""
        removed = 0
        for part in (self.root / "tmp").glob("*.part"):
            pid = _writer_pid(part.name)
            if pid is None:
                continue
            try:
                if _may_have_written(pid, part.stat().st_mtime):
                    continue
                part.unlink()
            except FileNotFoundError:  # its writer finished meanwhile
                continue
            removed += 1
        if removed:
            log.warning("removed %d temporary file(s) left in %s by writers that died mid-write", removed, self.root)

    def _ensure_folder(self, folder: Path) -> None:
        if folder in self._folders and folder.is_dir():
            return
        # under the lock: a second writer must not use the folder before its name is durable
        with self._folders_lock:
            _make_durable_folder(folder)
            self._folders.add(folder)


def _make_durable_folder(folder: Path) -> None:
    """Create `folder` and any missing parents, fsyncing the parent of each one created: a file's fsync makes
    its own name durable, not the name of a folder made for it."""
    try:
        folder.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        _make_durable_folder(folder.parent)
        folder.mkdir(mode=DIR_MODE)
    fsync_dir(folder.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _writer_pid(part_name: str) -> int | None:
    """The pid in a temporary file's name (`<final name>.<pid>.<sequence>.part`), None if it has none."""
    fields = part_name.split(".")
    if len(fields) < 4 or not fields[-3].isdigit():
        return None
    return int(fields[-3])


def _may_have_written(pid: int, written_at: float) -> bool:
    """Whether the process now under `pid` may have written a file at `written_at` (seconds since the epoch)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, owned by another user
        pass
    started = _started_at(pid)
    # the boot time is whole seconds: only a file clearly older than the process is not its own
    return started is None or written_at >= started - 2.0


def _started_at(pid: int) -> float | None:
    """When the process `pid` started, from /proc (None where there is no /proc, or it has just ended)."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    # field 22 of stat is the start time in clock ticks after boot; the list starts at field 3
    return int(boot.split()[1]) + int(after_name[19]) / os.sysconf("SC_CLK_TCK")


def _link_if_absent(source: Path, target: Path) -> bool:
    """Give `source`'s file the name `target` if that name is free (atomically: link never replaces)."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    return True


def _unlink_if_same_file(path: Path, fd: int) -> None:
    """Take back a name given before a failed fsync: nobody was told of it, and its data may never reach the
    disk. Only while it is still this file's name: a re-send of the same instance may have replaced it."""
    try:
        if os.path.samestat(os.stat(path), os.fstat(fd)):
            path.unlink()
    except FileNotFoundError:
        pass
