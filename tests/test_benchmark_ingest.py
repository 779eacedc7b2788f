"""The ingest benchmark end to end at a tiny size: DCMTK storescu sends to storescp, Orthanc and scintnode,
the table has a row for each, and the working folder (gigabytes at full size) is gone afterwards."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from benchmarks import ingest

pytestmark = pytest.mark.e2e


def test_a_tiny_run_measures_all_three_receivers_and_leaves_no_files_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--ct", "0", "--nm", "4", "--wb", "0", "--rounds", "1", "--associations", "1"]
    assert ingest.main(argv) == 0
    table = capsys.readouterr().out
    for receiver in ("dcmtk storescp", "orthanc", "scintnode"):
        assert f"| {receiver} | nm 256x256 | 1 |" in table
    assert list(tmp_path.iterdir()) == []
