"""End to end: a dual-phase neck CT sent in two associations (DCMTK storescu), the in-process node runs the
U-Net episode, and the SEG, SR and key-image SC land in Orthanc, linked to each other and to the CT."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from scintnode.config import Settings
from scintnode.node import Node
from scintnode.orthanc import OrthancServer, SeriesInPacs
from scintnode.phantoms.ct_parathyroid import write_studies
from scintnode.storescu import send_files
from tests.dicom_validation import assert_dciodvfy_clean

pytestmark = pytest.mark.e2e


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "pacs") as server:
        yield server


def wait_for_results(pacs: OrthancServer, study_uid: str, timeout: float = 180) -> dict[str, SeriesInPacs]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {s.modality: s for s in pacs.series_of_study(study_uid) if s.instance_ids}
        if {"SEG", "SR", "OT"} <= set(found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no SEG, SR and SC for study {study_uid} in the PACS within {timeout} s")


def test_dual_phase_ct_in_two_associations_gives_seg_sr_and_key_image(tmp_path: Path, pacs: OrthancServer) -> None:
    truth = json.loads(write_studies(tmp_path / "studies", count=1, seed=4242).read_text())
    case = truth["cases"][0]
    native = [tmp_path / "studies" / f for f in case["unenhanced"]["files"]]
    enhanced = [tmp_path / "studies" / f for f in case["enhanced"]["files"]]
    settings = Settings.model_validate(
        {
            "node": {"port": 0, "bind_address": "127.0.0.1"},
            "storage": {"root": str(tmp_path / "spool")},
            "completion": {"release_quiet_seconds": 0.3, "long_quiet_seconds": 30},
            "dispatch": {"poll_seconds": 0.2, "base_delay_seconds": 0.2},
            "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
        }
    )
    node = Node(settings)
    node.start()
    try:
        send_files(native, "127.0.0.1", node.port, "SCINTNODE")  # the scanner sends each phase on its own
        send_files(enhanced, "127.0.0.1", node.port, "SCINTNODE")
        found = wait_for_results(pacs, case["study_instance_uid"])
    finally:
        node.stop()

    seg, sr, sc = (dcmread(BytesIO(pacs.instance_file(found[m].instance_ids[0]))) for m in ("SEG", "SR", "OT"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case["unenhanced"]["series_instance_uid"]
    assert seg.FrameOfReferenceUID == case["frame_of_reference_uid"]
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence} == {"111002"}
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence and len(evidence) == len(native) + len(enhanced) + 1
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in {dcmread(p).SOPInstanceUID for p in native}
    path = tmp_path / "seg.dcm"
    path.write_bytes(pacs.instance_file(found["SEG"].instance_ids[0]))
    assert_dciodvfy_clean(path)
