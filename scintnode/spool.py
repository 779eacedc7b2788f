"""The spool: where received instances and written results live on disk, one file per SOP instance.

Paths are built from hashes of the UIDs, never from UID text, so no sender can steer a path. Every file
is written to a temporary name, fsynced, renamed and its directory fsynced before anyone is told it exists."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

FILE_MODE = 0o600  # spool files hold patient data: not readable by other users
DIR_MODE = 0o700


class SpoolFull(OSError):
    """Less free space than the configured reserve: refuse new data rather than fill the disk."""


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the spool root
    sha256: str
    size: int


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class Spool:
    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        for sub in ("", "inputs", "outputs", "tmp"):
            (self.root / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def store_input(self, data: bytes, study_uid: str, series_uid: str, sop_uid: str) -> StoredFile:
        content = hashlib.sha256(data).hexdigest()
        # the content hash in the name keeps a changed re-send beside the original instead of over it
        relative = (
            f"inputs/{_digest(study_uid)[:16]}/{_digest(series_uid)[:16]}/{_digest(sop_uid)[:32]}-{content[:12]}.dcm"
        )
        self._write(relative, data)
        return StoredFile(relative, content, len(data))

    def store_output(self, data: bytes, study_uid: str, sop_uid: str) -> StoredFile:
        content = hashlib.sha256(data).hexdigest()
        relative = f"outputs/{_digest(study_uid)[:16]}/{_digest(sop_uid)[:32]}.dcm"
        self._write(relative, data)
        return StoredFile(relative, content, len(data))

    def remove(self, relative: str) -> None:
        path = self.absolute(relative)
        path.unlink(missing_ok=True)
        # drop emptied folders up to the stage folder, so retention leaves no husks behind
        for parent in path.parents:
            if parent in (self.root / "inputs", self.root / "outputs", self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def _write(self, relative: str, data: bytes) -> None:
        if self.min_free_bytes and self.free_bytes() - len(data) < self.min_free_bytes:
            raise SpoolFull(f"spool {self.root} would drop below its reserve of {self.min_free_bytes} bytes")
        final = self.absolute(relative)
        final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if final.exists() and final.stat().st_size == len(data):
            return  # same content hash in the name: already stored
        tmp = self.root / "tmp" / f"{final.name}.{os.getpid()}.{id(data)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
