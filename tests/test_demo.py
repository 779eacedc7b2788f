"""The quick start's main job, `scintnode demo`, for one network: synthetic studies sent with storescu to a
node, results found in a real Orthanc, a report printed, and its temporary folder removed afterwards."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from scintnode import demo

pytestmark = pytest.mark.e2e


def test_the_demo_reports_every_study_and_leaves_no_files_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert demo.main(["--network", "thyroid-resnet34", "--per-class", "1"]) == 0
    out = capsys.readouterr().out
    assert "4/4 studies have their results in the PACS" in out  # one synthetic study per class
    assert "SYNTHETIC" in out and "not clinical" in out
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_given_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "kept"
    assert demo.main(["--network", "thyroid-resnet34", "--per-class", "1", "--workdir", str(workdir)]) == 0
    assert (workdir / "node" / "index.db").exists() and any((workdir / "studies").rglob("*.dcm"))
    assert "(kept)" in capsys.readouterr().out
