"""Input slots: empty files whose names were made durable ahead of the instances they will hold.

A received instance is written into the next free slot and fsynced. Its name already reached the disk when the
slot's folder was made, so that one fsync makes the instance durable: no link, no rename and no folder fsync in
the serial group commit, which over 4 associations is what paced ingest (benchmarks/RESULTS.md). POSIX promises
a new name only after its folder's fsync; a slot's folder is fsynced, and its own name in `slots/`, before any of
its slots is handed out.

Slots are handed out in order and never reused: an instance's file stays in its slot until retention removes it.
Free slots are the empty files of the newest folders; one folder is added when fewer than REFILL_BELOW are left,
so every free slot lies in the newest two folders. A slot written but never indexed (a crash between its fsync
and the commit) is non-empty, lies in the newest folders, and `written_at_start` lists it for the receiver's
start-up sweep. One process uses a slot folder at a time (an exclusive lock), else two could fill one slot."""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import threading
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

# A folder of 256 is made in about 2.5 ms (10 us a slot), the hiccup one sender sees every 256 instances.
SLOTS_PER_FOLDER = 256
REFILL_BELOW = 64
# Free and unindexed slots lie in the newest two folders (see above); a third is read at start as a margin.
SCANNED_AT_START = 3
FILE_MODE = 0o600  # spool files hold patient data: not readable by other users
DIR_MODE = 0o700


class SpoolInUse(OSError):
    """Another process holds the spool's input slots."""


class SlotPool:
    """The free slots under ``folder`` (spool-relative paths start with ``relative_prefix``)."""

    def __init__(self, folder: Path, relative_prefix: str) -> None:
        self.folder = folder
        self._prefix = relative_prefix
        try:
            folder.mkdir(mode=DIR_MODE)
            fsync_dir(folder.parent)  # its own name, before any folder in it is made durable
        except FileExistsError:
            pass
        lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolInUse(
                f"the spool's input slots in {folder} are in use by another scintnode (one node per spool)"
            ) from None
        self._unlock = weakref.finalize(self, os.close, lock_fd)  # closing the descriptor releases the lock
        self._free: collections.deque[str] = collections.deque()
        self._free_lock = threading.Lock()
        self._refilling = threading.Lock()
        self.written_at_start: list[str] = []
        newest = sorted(self._folder_numbers())[-SCANNED_AT_START:]
        for number in newest:
            fsync_dir(folder / _folder_name(number))  # a folder a crash cut short may hold names not yet durable
            for entry in sorted(os.scandir(folder / _folder_name(number)), key=lambda e: e.name):
                relative = f"{relative_prefix}/{_folder_name(number)}/{entry.name}"
                (self.written_at_start if entry.stat().st_size else self._free).append(relative)
        self._next_number = max(newest, default=-1) + 1
        if len(self._free) < REFILL_BELOW:
            self._add_folder()

    def take(self) -> str:
        """The spool-relative path of a free slot, now no longer free."""
        while True:
            with self._free_lock:
                slot = self._free.popleft() if self._free else None
                low = len(self._free) < REFILL_BELOW
            if low and self._refilling.acquire(blocking=slot is None):
                # one thread refills while the others go on taking the slots left
                try:
                    if len(self._free) < REFILL_BELOW:
                        self._add_folder()
                except OSError as exc:
                    if slot is None:
                        raise
                    log.warning(
                        "could not add input slots (%s); %d left, tried again at the next", exc, len(self._free)
                    )
                finally:
                    self._refilling.release()
            if slot is not None:
                return slot

    def free_count(self) -> int:
        return len(self._free)

    def close(self) -> None:
        self._unlock()

    def _folder_numbers(self) -> list[int]:
        return [int(entry.name) for entry in os.scandir(self.folder) if entry.is_dir() and entry.name.isdigit()]

    def _add_folder(self) -> None:
        """SLOTS_PER_FOLDER empty files in a new folder, their names and the folder's own made durable."""
        name = _folder_name(self._next_number)
        self._next_number += 1
        made = self.folder / name
        made.mkdir(mode=DIR_MODE)
        slots = [f"{index:04d}.dcm" for index in range(SLOTS_PER_FOLDER)]
        for slot in slots:
            os.close(os.open(made / slot, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        fsync_dir(made)
        fsync_dir(self.folder)
        with self._free_lock:
            self._free.extend(f"{self._prefix}/{name}/{slot}" for slot in slots)
        log.debug("added %d input slots in %s", SLOTS_PER_FOLDER, made)


def _folder_name(number: int) -> str:
    return f"{number:08d}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
