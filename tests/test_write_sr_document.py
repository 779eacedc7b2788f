"""The SR document scintnode assembles equals what highdicom's Comprehensive3DSR constructor makes of the same
content tree and arguments, element by element (only the moments it was made may differ: creation, content
and highdicom's own contribution date and time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from scintnode.finding import Hotspot
from scintnode.write.seg import build_segmentation
from scintnode.write.sr import MANUFACTURER, check_inputs, contributing_equipment
from scintnode.write.sr_content import measurement_report
from scintnode.write.sr_document import PreliminaryComprehensive3DSR
from tests.test_ct_outputs import FixedMask, phases  # noqa: F401  (phases is a fixture)
from tests.test_nm_header import study, thyroid_source
from tests.test_write_sr import round_trip, thyroid_finding, thyroid_model

_MOMENTS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _comparable(document: Dataset) -> dict[str, Any]:
    written = round_trip(document)
    for keyword in _MOMENTS:
        assert keyword in written, f"{keyword} missing"
        del written[keyword]
    for item in written.ContributingEquipmentSequence:
        item.pop("ContributionDateTime", None)
    # The implementation that wrote the file (and so the meta's length): highdicom's constructor names highdicom,
    # ours scintnode. infer.py names scintnode on every result it encodes either way.
    for keyword in ("ImplementationClassUID", "ImplementationVersionName", "FileMetaInformationGroupLength"):
        assert keyword in written.file_meta, f"{keyword} missing"
        del written.file_meta[keyword]
    return {"file_meta": written.file_meta.to_json_dict(), "data_set": written.to_json_dict()}


def _placement(description: str, instance_number: int = 1) -> dict[str, Any]:
    """The document's own series, instance and description arguments, with fresh UIDs."""
    return {
        "series_instance_uid": generate_uid(),
        "series_number": 9001,
        "sop_instance_uid": generate_uid(),
        "instance_number": instance_number,
        "manufacturer": MANUFACTURER,
        "series_description": description,
    }


def _both(
    evidence: Sequence[Dataset], report: Sequence[Dataset], predecessors: Sequence[Dataset] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    shared = _placement("AI report (unverified) - test", instance_number=3)
    shared["contributing_equipment"] = [contributing_equipment(thyroid_model())]
    library = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],  # the root container: highdicom takes a Dataset or a pydicom Sequence, not a list
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=list(predecessors) or None,
        **shared,
    )
    ours = PreliminaryComprehensive3DSR(evidence, report, previous_versions=predecessors, **shared)
    return _comparable(library), _comparable(ours)


def test_a_planar_report_equals_highdicoms() -> None:
    source = thyroid_source()
    finding = thyroid_finding(
        [source], hotspots=(Hotspot(0, 1, 50.5, 64.5, 0.97, "Grad-CAM peak"), Hotspot(0, 1, 80.0, 60.0, 0.6, "peak"))
    )
    check_inputs(finding, [source])
    library, ours = _both([source], measurement_report(finding, [source]))
    assert ours == library
    assert ours["data_set"]["0040A491"]["Value"] == ["COMPLETE"]  # CompletionFlag, read back


def test_evidence_from_other_studies_predecessors_and_repeats_equal_highdicoms() -> None:
    current = thyroid_source(study("ACC-CURRENT"))
    earlier = thyroid_source(study("ACC-EARLIER"))
    other = thyroid_source(study("ACC-OTHER"))
    finding = thyroid_finding([current, earlier])
    earlier_report = round_trip(
        PreliminaryComprehensive3DSR(
            [current],
            measurement_report(thyroid_finding([current]), [current]),
            **_placement("earlier"),
        )
    )
    library, ours = _both(
        [current, earlier, other, current], measurement_report(finding, [current, earlier]), [earlier_report]
    )
    assert ours == library
    assert len(ours["data_set"]["0040A375"]["Value"]) == 1  # Current Requested Procedure Evidence: one study
    assert len(ours["data_set"]["0040A385"]["Value"]) == 2  # Pertinent Other Evidence: two studies
    assert "0040A360" in ours["data_set"]  # Predecessor Documents


def test_a_ct_report_referencing_its_segmentation_equals_highdicoms(
    phases: tuple[list[Dataset], list[Dataset]],  # noqa: F811
) -> None:
    native, enhanced = phases
    sources = [*native, *enhanced]
    slots = ["unenhanced"] * len(native) + ["enhanced"] * len(enhanced)
    finding = FixedMask().run_episode(slots, sources)
    segmentation = build_segmentation(finding, sources)
    library, ours = _both([*sources, segmentation], measurement_report(finding, sources, segmentation))
    assert ours == library
    referenced = {
        item["00081155"]["Value"][0]
        for study_item in ours["data_set"]["0040A375"]["Value"]
        for series in study_item["00081115"]["Value"]
        for item in series["00081199"]["Value"]
    }
    assert str(segmentation.SOPInstanceUID) in referenced


def test_a_referenced_image_missing_from_the_evidence_is_refused() -> None:
    source, stranger = thyroid_source(), thyroid_source()
    finding = thyroid_finding([source])
    with pytest.raises(ValueError, match=str(source.SOPInstanceUID)):
        PreliminaryComprehensive3DSR(
            [stranger],
            measurement_report(finding, [source]),
            **_placement("x"),
        )
