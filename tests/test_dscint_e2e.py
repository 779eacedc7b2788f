"""End to end for Dscint: a synthetic whole-body study sent by DCMTK storescu to an in-process node routes by
rules/bone.yaml and runs the committed weights. As one 2-frame anterior+posterior object: its SR and two-view
heatmap SC arrive in Orthanc, reference the input and pass dciodvfy (and dsrdump for the SR). As two
single-view objects in one association: the episode pairs them into one job with both views."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from scintnode.config import Settings
from scintnode.db import Job
from scintnode.node import Node
from scintnode.orthanc import OrthancServer, SeriesInPacs
from scintnode.phantoms.bone import write_studies
from scintnode.storescu import send_files
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean, assert_dsrdump_parses

pytestmark = pytest.mark.e2e


def wait_for_results(pacs: OrthancServer, study_uid: str, timeout: float = 120) -> list[SeriesInPacs]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in pacs.series_of_study(study_uid) if s.modality in ("SR", "OT") and s.instance_ids]
        if {s.modality for s in found} == {"SR", "OT"}:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no SR and SC for study {study_uid} in the PACS within {timeout} s")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("studies")
    truth = json.loads(write_studies(folder, per_class=1, seed=31).read_text())
    entry = next(e for e in truth["images"] if e["label"] == "metastasis")
    return folder / entry["file"], entry


def single_view(ds: Dataset, frame: int) -> Dataset:
    """Frame `frame` (1-based) of a 2-frame whole-body object as its own single-view object, same series."""
    out = copy.deepcopy(ds)
    pixels = ds.pixel_array[frame - 1]
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    out.NumberOfFrames = 1
    out.EnergyWindowVector, out.DetectorVector, out.NumberOfDetectors = [1], [1], 1
    out.DetectorInformationSequence = [ds.DetectorInformationSequence[frame - 1]]
    out.CountsAccumulated = int(pixels.sum())
    out.PatientOrientation = ["L", "F"] if frame == 1 else ["R", "F"]
    out.InstanceNumber = frame
    return out


@pytest.fixture
def node_and_pacs(tmp_path: Path) -> Iterator[tuple[Node, OrthancServer]]:
    with OrthancServer(tmp_path / "pacs") as pacs:
        settings = Settings.model_validate(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": str(tmp_path / "spool")},
                "dispatch": {"poll_seconds": 0.2, "base_delay_seconds": 0.2},
                "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
            }
        )
        node = Node(settings)
        node.start()
        try:
            yield node, pacs
        finally:
            node.stop()


def jobs_of(node: Node) -> list[tuple[str, str, str, int]]:
    with node.db.session() as session:
        return [(j.rule_name, j.network, j.state, len(j.inputs)) for j in session.scalars(select(Job))]


def test_whole_body_study_through_the_node_into_orthanc(
    tmp_path: Path, study: tuple[Path, dict[str, object]], node_and_pacs: tuple[Node, OrthancServer]
) -> None:
    study_file, entry = study
    node, pacs = node_and_pacs
    send_files([study_file], "127.0.0.1", node.port, "SCINTNODE")
    series = wait_for_results(pacs, str(entry["study_instance_uid"]))
    sr_bytes = pacs.instance_file(next(s for s in series if s.modality == "SR").instance_ids[0])
    sc_series = next(s for s in series if s.modality == "OT")
    assert len(sc_series.instance_ids) == 1  # one picture with both views
    sc_bytes = pacs.instance_file(sc_series.instance_ids[0])
    assert jobs_of(node) == [("whole-body-anterior-posterior", "dscint", "done", 1)]

    source = dcmread(study_file, stop_before_pixels=True)
    sr, sc = dcmread(BytesIO(sr_bytes)), dcmread(BytesIO(sc_bytes))
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    points = [
        item
        for group in sr.ContentSequence
        if group.ConceptNameCodeSequence[0].CodeValue == "126010"
        for item in group.ContentSequence
        if item.ContentTemplateSequence[0].TemplateIdentifier == "1410"
    ]
    assert len(points) == 1  # the TID 1410 point at the hottest heatmap region, on frame 1 or 2
    reference = sc.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert list(reference.ReferencedFrameNumber) == [1, 2]
    assert sc.Columns > 2 * source.Columns and "frames 1, 2" in sc.DerivationDescription

    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    sr_path.write_bytes(sr_bytes)
    sc_path.write_bytes(sc_bytes)
    assert_dciodvfy_clean(sr_path)
    assert_dsrdump_parses(sr_path)
    assert_dciodvfy_clean(sc_path, allowed_errors=[LATERALITY_2C_LIMITATION])


def test_two_single_view_objects_are_paired_into_one_job(
    tmp_path: Path, study: tuple[Path, dict[str, object]], node_and_pacs: tuple[Node, OrthancServer]
) -> None:
    study_file, entry = study
    node, pacs = node_and_pacs
    both = dcmread(study_file)
    files = [tmp_path / "posterior.dcm", tmp_path / "anterior.dcm"]
    single_view(both, 2).save_as(files[0], enforce_file_format=True)
    single_view(both, 1).save_as(files[1], enforce_file_format=True)
    send_files(files, "127.0.0.1", node.port, "SCINTNODE")
    series = wait_for_results(pacs, str(entry["study_instance_uid"]))
    assert jobs_of(node) == [("whole-body-single-views", "dscint", "done", 2)]
    sr = dcmread(BytesIO(pacs.instance_file(next(s for s in series if s.modality == "SR").instance_ids[0])))
    evidence = {
        item.ReferencedSOPInstanceUID
        for ref in sr.CurrentRequestedProcedureEvidenceSequence
        for ser in ref.ReferencedSeriesSequence
        for item in ser.ReferencedSOPSequence
    }
    assert evidence == {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
