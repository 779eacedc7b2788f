"""End to end for ParaNet: a synthetic dual-phase MIBI study and a thyroid scan of another study, sent in two
associations, gathered into one episode by the in-process node, answered in Orthanc with an SR and three SCs.

Real parts: pynetdicom Storage SCU as the modality, the node, Orthanc as the PACS, dciodvfy and dsrdump."""

from __future__ import annotations

import json
import shutil
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from scintnode.config import DEFAULT_RULES_DIR, Destination, Settings
from scintnode.node import Node
from scintnode.orthanc import OrthancServer, SeriesInPacs
from scintnode.phantoms.parathyroid import write_studies
from scintnode.storescu import send_files
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean, assert_dsrdump_parses

pytestmark = pytest.mark.e2e


def wait_for_results(pacs: OrthancServer, study_uid: str, heatmaps: int, timeout: float = 120) -> list[SeriesInPacs]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in pacs.series_of_study(study_uid) if s.modality in ("SR", "OT")]
        counts = {m: sum(len(s.instance_ids) for s in found if s.modality == m) for m in ("SR", "OT")}
        if counts == {"SR": 1, "OT": heatmaps}:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no SR and {heatmaps} SCs for study {study_uid} in the PACS within {timeout} s")


def test_parathyroid_episode_through_the_node_into_orthanc(tmp_path: Path) -> None:
    folder = tmp_path / "studies"
    truth = json.loads(write_studies(folder, patients=12, seed=5).read_text())
    case = next(c for c in truth["cases"] if c["thyroid_other_day"])
    files = {slot: folder / name for slot, name in case["files"].items()}
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(DEFAULT_RULES_DIR / "parathyroid.yaml", rules)  # only the episode rule: no thyroid classifier
    with OrthancServer(tmp_path / "pacs") as pacs:
        settings = Settings.model_validate(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": str(tmp_path / "spool")},
                "dispatch": {"poll_seconds": 0.2},
                "rules_dir": str(rules),
                "destinations": {"pacs": Destination(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)},
            }
        )
        node = Node(settings)
        node.start()
        try:
            send_files([files["early"], files["late"]], "127.0.0.1", node.port, "SCINTNODE")  # one association
            send_files([files["thyroid"]], "127.0.0.1", node.port, "SCINTNODE")  # days later, another study
            series = wait_for_results(pacs, case["thyroid_study_instance_uid"], heatmaps=3)
        finally:
            node.stop()
        sr_bytes = pacs.instance_file(next(s for s in series if s.modality == "SR").instance_ids[0])
        sc_ids = [i for s in series if s.modality == "OT" for i in s.instance_ids]
        sc_bytes = [pacs.instance_file(i) for i in sc_ids]
        assert not [s for s in pacs.series_of_study(case["mibi_study_instance_uid"]) if s.modality in ("SR", "OT")]

    sr = dcmread(BytesIO(sr_bytes))
    inputs = {slot: dcmread(path) for slot, path in files.items()}
    assert sr.StudyInstanceUID == inputs["thyroid"].StudyInstanceUID  # the most recent input's study
    other = {
        item.ReferencedSOPInstanceUID
        for study in sr.PertinentOtherEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert other == {inputs["early"].SOPInstanceUID, inputs["late"].SOPInstanceUID}
    sources = {dcmread(BytesIO(b)).SourceImageSequence[0].ReferencedSOPInstanceUID for b in sc_bytes}
    assert sources == {ds.SOPInstanceUID for ds in inputs.values()}  # one heatmap per input image
    sr_path = tmp_path / "sr.dcm"
    sr_path.write_bytes(sr_bytes)
    assert_dciodvfy_clean(sr_path)
    dump = assert_dsrdump_parses(sr_path)
    assert "paranet-small (synthetic-tr" in dump and '(263654008,SCT,"Abnormal")' in dump  # every class has a NUM
    for number, data in enumerate(sc_bytes):
        path = tmp_path / f"sc{number}.dcm"
        path.write_bytes(data)
        assert_dciodvfy_clean(path, allowed_errors=[LATERALITY_2C_LIMITATION])
