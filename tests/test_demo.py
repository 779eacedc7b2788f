"""The quick start's main job, `scintnode demo`, for one network: synthetic studies sent with storescu to a
node, results found in a real Orthanc, a report printed, and its temporary folder removed afterwards."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid

from scintnode import demo
from scintnode.demo_cases import CASES, DemoStudy
from scintnode.orthanc import OrthancServer
from tests.harness import upload_result

pytestmark = pytest.mark.e2e


def test_the_demo_reports_every_study_and_leaves_no_files_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert demo.main(["--per-class", "1"]) == 0  # every network, as the quick start runs it
    out = capsys.readouterr().out
    tally = re.search(r"(\d+)/(\d+) studies have their results in the PACS", out)
    assert tally is not None, out[-2000:]
    found, sent = map(int, tally.groups())
    assert found == sent >= len(CASES)
    assert all(f"  {network} " in out for network in CASES), "each network's studies are reported"
    assert "SYNTHETIC" in out and "not clinical" in out
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_given_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "kept"
    assert demo.main(["--network", "thyroid-resnet34", "--per-class", "1", "--workdir", str(workdir)]) == 0
    assert (workdir / "node" / "index.db").exists() and any((workdir / "studies").rglob("*.dcm"))
    assert "(kept)" in capsys.readouterr().out


def test_a_study_counts_only_its_own_networks_results(tmp_path: Path) -> None:
    """A ParaNet episode's results go into the thyroid scan's study, which the thyroid network's results also
    reach: those must not stand in for ParaNet's."""
    study = generate_uid()
    case = DemoStudy("paranet-small", (), study, "abnormal")
    with OrthancServer(tmp_path / "pacs") as pacs:
        upload_result(pacs, study, "SR", Comprehensive3DSRStorage, "thyroid-resnet34")
        upload_result(pacs, study, "OT", SecondaryCaptureImageStorage, "thyroid-resnet34")
        assert demo.wait_for_results(pacs, case, time.monotonic() + 0.5) is None
        upload_result(pacs, study, "SR", Comprehensive3DSRStorage, "paranet-small")
        upload_result(pacs, study, "OT", SecondaryCaptureImageStorage, "paranet-small")
        found = demo.wait_for_results(pacs, case, time.monotonic() + 10)
    assert found is not None
    assert sorted(entry.split()[0] for entry in found) == ["OT", "SR"]
