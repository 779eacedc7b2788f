"""The ingest benchmark end to end at a tiny size: DCMTK storescu sends to storescp, Orthanc and scintnode,
the table has a row for each, and the working folder (gigabytes at full size) is gone afterwards."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from benchmarks import ingest
from benchmarks.datasets import write_nm

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


def test_the_working_folder_can_be_placed_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--under DIR` (a tmpfs, to measure without the disk) holds the sets and the storage, and is left empty."""
    system_temporary, under = tmp_path / "system", tmp_path / "under"
    system_temporary.mkdir()
    under.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temporary))
    argv = ["--ct", "0", "--nm", "2", "--wb", "0", "--rounds", "1", "--associations", "1"]
    assert ingest.main([*argv, "--receivers", "scintnode", "--under", str(under)]) == 0
    out = capsys.readouterr().out
    assert f"writing synthetic sets under {under}/scintnode-bench-" in out
    assert "| scintnode | nm 256x256 | 1 |" in out
    assert list(under.iterdir()) == [] and list(system_temporary.iterdir()) == []


def test_each_run_removes_what_its_receiver_stored(tmp_path: Path) -> None:
    """Copies left on the disk slowed later rounds (fsync-heavy receivers most), so a run leaves none."""
    files = write_nm(tmp_path / "set", 2)
    row = ingest.measure("dcmtk", "nm", files, 1, tmp_path / "runs")
    assert row.instances == 2 and row.seconds > 0
    assert list((tmp_path / "runs").iterdir()) == []
