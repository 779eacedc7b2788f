"""Shared fixtures: synthetic NM files and a node's storage in a temporary folder; a check of free disk space
before the session starts."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from pynetdicom.transport import AssociationSocket

from scintnode.config import StorageSettings
from scintnode.phantoms import nm

NMFactory = Callable[..., Path]
SUITE_WRITES_BYTES = 768 * 1024 * 1024  # a whole run leaves about 450 MB in its temporary folders


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying why, where the disk is too full to run the nodes the tests start: each would
    answer every C-STORE with 0xA700 (as it should), and a dozen end-to-end tests would fail far from the
    cause."""
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    reserve = StorageSettings().min_free_bytes
    needed = reserve + SUITE_WRITES_BYTES
    if free < needed:
        pytest.exit(
            f"only {free / 2**20:.0f} MiB free in {folder}; the tests need {needed / 2**20:.0f} MiB there: "
            f"a node refuses instances while under {reserve / 2**20:.0f} MiB are free "
            "(storage.min_free_bytes), and the suite writes about 450 MB. Free some space and run again.",
            returncode=1,
        )


class _LateWake(threading.Event):
    """An event whose waiter resumes 0.3 s late, as a loaded machine's scheduler may leave a thread."""

    def wait(self, timeout: float | None = None) -> bool:
        ready = super().wait(timeout)
        time.sleep(0.3)
        return ready


@pytest.fixture
def late_requestor(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom requestors in this test see their connection up 0.3 s after it is: a peer that answers at once
    and closes has closed by then. This is the race that made `is_rejected` False in CI."""
    original = AssociationSocket.__init__

    def late(self: AssociationSocket, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        self._ready = _LateWake()

    monkeypatch.setattr(AssociationSocket, "__init__", late)


@pytest.fixture
def nm_file(tmp_path: Path) -> NMFactory:
    """Write a small synthetic pertechnetate NM image; keyword arguments override study/series/agent."""
    counter = iter(range(1, 10_000))

    def make(
        study_uid: str | None = None,
        series_uid: str | None = None,
        agent: str = "pertechnetate",
        patient_id: str = "SYN0001",
        size: int = 64,
    ) -> Path:
        index = next(counter)
        patient = nm.Patient(patient_id, "SYNTHETIC^PATIENT", date(1970, 1, 1), "F")
        start = datetime(2026, 3, 2, 9, 0)
        study = nm.StudyInfo(
            study_uid or generate_uid(), start, accession=f"SYN{index:05d}", description="NM thyroid (synthetic)"
        )
        rng = np.random.default_rng(index)
        counts = rng.poisson(20, size=(1, size, size)).astype(np.uint16)
        ds = nm.build_nm_image(
            counts,
            patient=patient,
            study=study,
            series_uid=series_uid or generate_uid(),
            series_number=1,
            series_description="THYROID ANT (synthetic)",
            agent=agent,
            views=("anterior",),
            acquired=start + timedelta(minutes=20),
            injected=start,
            dose_mbq=80.0,
            pixel_spacing_mm=(1.8, 1.8),
            body_part="THYROID",
        )
        return nm.save(ds, tmp_path / f"nm{index:04d}.dcm")

    return make
