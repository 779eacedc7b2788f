"""End to end for the paper 004 network: a synthetic 131I neck study sent with DCMTK storescu to an in-process node,
routed by the shipped rules, and its SR (finding, probabilities, TID 1410 point) and heatmap SC stored in Orthanc,
both passing dciodvfy."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
import torch
from pydicom import Dataset, dcmread

from scintnode.config import Destination, Settings
from scintnode.models.i131_neck import NAME, ResidualResNet18, load_i131_neck_network, save_weights
from scintnode.models.registry import Registry, default_registry
from scintnode.node import Node
from scintnode.orthanc import OrthancServer
from scintnode.phantoms.i131_neck import write_studies
from scintnode.storescu import send_files
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean, assert_dsrdump_parses
from tests.harness import wait_for

pytestmark = pytest.mark.e2e


def test_default_registry_serves_the_i131_network() -> None:
    assert NAME in default_registry().names


def content_items(ds: Dataset) -> list[Dataset]:
    """Every content item of an SR tree, depth first."""
    items = []
    for item in ds.get("ContentSequence") or []:
        items.append(item)
        items.extend(content_items(item))
    return items


def test_i131_study_through_the_node_into_orthanc(tmp_path: Path) -> None:
    truth = json.loads(write_studies(tmp_path / "studies", count=1, seed=8, residual_fraction=1.0).read_text())
    entry = truth["images"][0]
    study_file = tmp_path / "studies" / entry["file"]
    torch.manual_seed(0)
    weights = tmp_path / "i131.pt"  # untrained: this test is about the node, not about accuracy
    save_weights(ResidualResNet18(), weights, {"version": "e2e", "image_size": 64})
    registry = Registry({NAME: lambda: load_i131_neck_network(weights)})

    with OrthancServer(tmp_path / "pacs") as pacs:
        settings = Settings.model_validate(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": str(tmp_path / "spool")},
                "dispatch": {"poll_seconds": 0.2},
                "http": {"enabled": False},
                "destinations": {"pacs": Destination(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)},
            }
        )
        results: dict[str, bytes] = {}

        def both_arrived() -> bool:
            for series in pacs.series_of_study(entry["study_instance_uid"]):
                if series.modality in ("SR", "OT") and series.instance_ids:
                    results[series.modality] = pacs.instance_file(series.instance_ids[0])
            return set(results) == {"SR", "OT"}

        node = Node(settings, registry=registry)
        node.start()
        try:
            send_files([study_file], "127.0.0.1", node.port, "SCINTNODE")
            wait_for(both_arrived, timeout=120)
        finally:
            node.stop()

    source = dcmread(study_file)
    sr, sc = dcmread(BytesIO(results["SR"])), dcmread(BytesIO(results["OT"]))
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    items = content_items(sr)
    findings = {
        (i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
        for i in items
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
    }
    assert findings <= {("RTT-PRESENT", "99SCINT"), ("RTT-ABSENT", "99SCINT")} and findings
    probabilities = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "122157"
    ]
    assert len(probabilities) == 3  # one per class, and the predicted one again beside the point
    assert sum(probabilities[:2]) == pytest.approx(100.0, abs=0.01)
    (point,) = [i for i in items if i.ValueType == "SCOORD"]
    assert point.GraphicType == "POINT"
    assert point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == 1  # the anterior frame
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and "synthetic-trained" in sc.DerivationDescription

    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    sr_path.write_bytes(results["SR"])
    sc_path.write_bytes(results["OT"])
    assert_dciodvfy_clean(sr_path)
    assert_dsrdump_parses(sr_path)
    assert_dciodvfy_clean(sc_path, allowed_errors=[LATERALITY_2C_LIMITATION])
