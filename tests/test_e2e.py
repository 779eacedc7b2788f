"""End to end: DCMTK storescu as the modality, the node as a process, Orthanc as the PACS.

The SR and SC must arrive in Orthanc (checked through its REST API), reference the input, and pass
dciodvfy; a PACS outage across a node restart must still end with exactly one SR and one SC in PACS."""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from sqlalchemy import select

from scintnode.config import Destination, Settings
from scintnode.db import Delivery, Job
from scintnode.orthanc import OrthancServer, SeriesInPacs
from scintnode.phantoms.thyroid import write_studies
from scintnode.receive_index import NM_IMAGE_STORAGE_RETIRED
from scintnode.storescu import send_files
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean, assert_dsrdump_parses
from tests.harness import start_node_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def thyroid_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("studies")
    truth = json.loads(write_studies(folder, per_class=1, seed=77).read_text())
    entry = truth["images"][0]
    return folder / entry["file"], entry


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "pacs") as server:
        yield server


def wait_for_series(pacs: OrthancServer, study_uid: str, timeout: float = 120) -> list[SeriesInPacs]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in pacs.series_of_study(study_uid) if s.modality in ("SR", "OT") and s.instance_ids]
        if {s.modality for s in found} == {"SR", "OT"}:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no SR and SC for study {study_uid} in the PACS within {timeout} s")


@pytest.mark.parametrize("sop_class", [None, NM_IMAGE_STORAGE_RETIRED], ids=["nm", "retired-nm-class"])
def test_thyroid_study_through_the_node_process_into_orthanc(
    tmp_path: Path, pacs: OrthancServer, thyroid_study: tuple[Path, dict[str, object]], sop_class: str | None
) -> None:
    """Also as NM Image Storage (Retired), which older gamma cameras still send."""
    study_file, entry = thyroid_study
    if sop_class is not None:
        retired = dcmread(study_file)
        retired.SOPClassUID = retired.file_meta.MediaStorageSOPClassUID = sop_class
        study_file = tmp_path / "retired-class.dcm"
        retired.save_as(study_file, enforce_file_format=True)
    config = tmp_path / "scintnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1", "allowed_callers": ["SCINTCAM"]},
                "storage": {"root": "spool"},
                "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
            }
        )
    )
    log = tmp_path / "node.log"
    node, port = start_node_process(config, log)
    try:
        send_files([study_file], "127.0.0.1", port, "SCINTNODE", calling_ae="SCINTCAM")
        series = wait_for_series(pacs, str(entry["study_instance_uid"]))
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
    output = log.read_text()
    assert node.returncode == 0, output
    assert str(dcmread(study_file).PatientName) not in output and "SYNTHETIC^" not in output  # no names in logs

    source = dcmread(study_file)
    sr_series = next(s for s in series if s.modality == "SR")
    sc_series = next(s for s in series if s.modality == "OT")
    sr_bytes = pacs.instance_file(sr_series.instance_ids[0])
    sc_bytes = pacs.instance_file(sc_series.instance_ids[0])
    sr, sc = dcmread(BytesIO(sr_bytes)), dcmread(BytesIO(sc_bytes))

    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == sc.PatientID == source.PatientID
    evidence = [
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for ser in study.ReferencedSeriesSequence
        for item in ser.ReferencedSOPSequence
    ]
    assert evidence == [source.SOPInstanceUID]
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES"

    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    sr_path.write_bytes(sr_bytes)
    sc_path.write_bytes(sc_bytes)
    assert_dciodvfy_clean(sr_path)
    assert_dsrdump_parses(sr_path)
    assert_dciodvfy_clean(sc_path, allowed_errors=[LATERALITY_2C_LIMITATION])


def test_results_survive_a_pacs_outage_across_a_node_restart(
    tmp_path: Path, thyroid_study: tuple[Path, dict[str, object]]
) -> None:
    from scintnode.node import Node

    study_file, entry = thyroid_study
    pacs = OrthancServer(tmp_path / "pacs")  # ports chosen, not started: the PACS is down
    settings = Settings.model_validate(
        {
            "node": {"port": 0, "bind_address": "127.0.0.1"},
            "storage": {"root": str(tmp_path / "spool")},
            "dispatch": {"poll_seconds": 0.2, "base_delay_seconds": 0.2, "max_delay_seconds": 1},
            "destinations": {
                "pacs": Destination(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port, timeout_seconds=2)
            },
        }
    )
    node = Node(settings)
    node.start()
    try:
        send_files([study_file], "127.0.0.1", node.port, "SCINTNODE")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with node.db.session() as session:
                attempts = [d.attempts for d in session.scalars(select(Delivery))]
            if len(attempts) == 2 and min(attempts) >= 2:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"deliveries were not retried while the PACS was down: {attempts}")
    finally:
        node.stop()

    with pacs:
        restarted = Node(settings)
        restarted.start()
        try:
            wait_for_series(pacs, str(entry["study_instance_uid"]))
            # more dispatch rounds, even far in the future: nothing may be sent twice
            later = datetime.datetime.now() + datetime.timedelta(days=1)
            assert [restarted.dispatcher.deliver_due(now=later) for _ in range(3)] == [0, 0, 0]
            series = pacs.series_of_study(str(entry["study_instance_uid"]))
        finally:
            restarted.stop()
        with restarted.db.session() as session:
            assert [j.state for j in session.scalars(select(Job))] == ["done"]  # not re-run after restart
            assert {d.state for d in session.scalars(select(Delivery))} == {"sent"}
    results = [s for s in series if s.modality in ("SR", "OT")]
    assert sorted((s.modality, len(s.instance_ids)) for s in results) == [("OT", 1), ("SR", 1)]
    assert os.path.exists(study_file)
