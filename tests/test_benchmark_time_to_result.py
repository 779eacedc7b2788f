"""The time-to-result benchmark's clock: the watcher stops a study's clock only when the last of its network's
result series is in the PACS (real Orthanc), and a burst gets different studies, not one study sent twice."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid

from benchmarks import time_to_result
from benchmarks.time_to_result import ResultWatcher, distinct_cases
from scintnode.demo_cases import DemoStudy
from scintnode.orthanc import OrthancServer
from tests.harness import upload_result

pytestmark = pytest.mark.e2e


def test_a_study_is_timed_when_the_last_of_its_networks_result_series_arrives(tmp_path: Path) -> None:
    thyroid = "thyroid-resnet34"
    with OrthancServer(tmp_path / "pacs") as pacs:
        upload_result(pacs, generate_uid(), "SR", Comprehensive3DSRStorage, thyroid)  # before the watcher
        watcher = ResultWatcher(pacs)
        try:
            study = generate_uid()
            case = DemoStudy(thyroid, (), study, "normal", frozenset({"SR", "OT"}))
            assert watcher.wait(case, time.monotonic() + 0.3) is None
            upload_result(pacs, study, "SR", Comprehensive3DSRStorage, thyroid)
            upload_result(pacs, generate_uid(), "OT", SecondaryCaptureImageStorage, thyroid)  # another study's SC
            upload_result(pacs, study, "OT", SecondaryCaptureImageStorage, "paranet-small")  # another network's
            upload_result(pacs, study, "OT", SecondaryCaptureImageStorage)  # names no network
            assert watcher.wait(case, time.monotonic() + 0.5) is None
            before_sc = time.monotonic()
            upload_result(pacs, study, "OT", SecondaryCaptureImageStorage, thyroid)
            stored = watcher.wait(case, time.monotonic() + 10)
            assert stored is not None and stored >= before_sc
        finally:
            watcher.close()


def test_a_burst_gets_as_many_different_studies_as_it_asks_for(tmp_path: Path) -> None:
    cases = distinct_cases("thyroid-resnet34", 9, tmp_path, seed=5)
    assert len(cases) == 9
    assert len({case.result_study_uid for case in cases}) == 9
    assert all(path.is_file() for case in cases for files in case.associations for path in files)


def test_a_whole_run_prints_its_row_and_leaves_no_files_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One thyroid study through a real node and Orthanc, and through the peer router (an Orthanc whose
    StableAge is 1 s here); its working folder (1.5 GB at full size) goes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--network", "thyroid-resnet34", "--studies", "1", "--timeout", "120", "--peer-stable-age", "1"]
    assert time_to_result.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if line.startswith("| thyroid-resnet34 | 1 | 1 |")]) == 1
    (peer,) = [line.split("|") for line in out if line.startswith("| thyroid-resnet34 | 1 |") and line.count("|") == 6]
    stable_median, scintnode_times = float(peer[3]), float(peer[5])
    assert 1.0 <= stable_median < 10.0, "the peer's clock stops at its StableStudy event, after its 1 s StableAge"
    assert scintnode_times > 0
    assert list(tmp_path.iterdir()) == []


def test_ct_at_a_geometry_is_written_at_it_and_labelled_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert time_to_result._ct_at_geometry(None, None) == {}, "no option: the demo's own CT"
    make, label = time_to_result._ct_at_geometry([20, 150, 140], None)["ct-parathyroid-unet"]
    assert label == "ct-parathyroid-unet (20x150x140 at 1x1x1 mm)"
    (case,) = distinct_cases("ct-parathyroid-unet", 1, tmp_path, seed=3, make=make)
    assert [len(files) for files in case.associations] == [20, 20]
    with pytest.raises(SystemExit):
        time_to_result.main(["--ct-shape", "4", "150", "140"])
    assert "at least 8 slices" in capsys.readouterr().err
