"""Tests of the SR writer on synthetic NM sources: validators, study placement, values read back.

Also home of the hand-built thyroid Finding the SC tests reuse."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from scintnode.finding import Finding, Hotspot
from scintnode.models.spec import Code, LabelSpec, ModelSpec
from scintnode.receive_index import NM_IMAGE_STORAGE_RETIRED
from scintnode.write import SR_SERIES_NUMBER, build_report
from tests.dicom_validation import assert_dciodvfy_clean, assert_dsrdump_parses, dciodvfy_messages
from tests.test_nm_header import study, thyroid_source, whole_body_source

LABELS = (
    LabelSpec("graves", "Graves' disease", Code("353295004", "SCT", "Graves disease")),
    LabelSpec("normal", "Normal", Code("17621005", "SCT", "Normal")),
    LabelSpec("subacute", "Subacute thyroiditis", Code("4598005", "SCT", "Subacute thyroiditis")),
    LabelSpec("tumour", "Thyroid tumour", Code("363478007", "SCT", "Malignant tumor of thyroid gland")),
)
PROBABILITIES = {"graves": 0.8125, "normal": 0.1, "subacute": 0.0575, "tumour": 0.03}
WEIGHTS_SHA256 = "3f" * 32


def thyroid_model(*, synthetic: bool = True) -> ModelSpec:
    return ModelSpec(
        name="thyroid-resnet34",
        version="0.1.0",
        title="Thyroid scintigraphy classifier (ResNet-34)",
        labels=LABELS,
        finding_site=Code("69748006", "SCT", "Thyroid"),
        procedure=Code("7562007", "SCT", "Radioisotope study of endocrine system"),
        weights_sha256=WEIGHTS_SHA256,
        trained_on_synthetic=synthetic,
    )


def hot_blob(shape: tuple[int, int], column: float, row: float, width: float = 10.0) -> np.ndarray:
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    distance2 = (columns + 0.5 - column) ** 2 + (rows + 0.5 - row) ** 2
    blob: np.ndarray = np.exp(-distance2 / (2 * width**2)).astype(np.float32)
    return blob


def display_image(source: Dataset, frame: int) -> np.ndarray:
    pixels: np.ndarray = source.pixel_array.reshape(-1, source.Rows, source.Columns)[frame - 1]
    return (pixels / max(float(pixels.max()), 1.0)).astype(np.float32)


def thyroid_finding(
    sources: Sequence[Dataset],
    *,
    hotspots: Sequence[Hotspot] = (Hotspot(0, 1, 50.5, 64.5, 0.97, "Grad-CAM peak"),),
    frames: Sequence[int] | None = None,
    synthetic: bool = True,
    zero_heatmap: bool = False,
) -> Finding:
    """Graves' disease at 81.25 %, with one hot spot on the left-of-image lobe of source 0."""
    frames = list(frames or [1] * len(sources))
    images = tuple(display_image(s, f) for s, f in zip(sources, frames, strict=True))
    heatmaps = tuple(np.zeros_like(image) if zero_heatmap else hot_blob(image.shape, 50.5, 64.5) for image in images)
    return Finding(
        model=thyroid_model(synthetic=synthetic),
        predicted="graves",
        probabilities=PROBABILITIES,
        hotspots=tuple(hotspots),
        display_images=images,
        heatmaps=heatmaps,
        source_frames=tuple(frames),
        inference_ms=12.5,
    )


def round_trip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def walk(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return (code.CodeValue, code.CodingSchemeDesignator)


def groups(sr: Dataset) -> list[Dataset]:
    return [item for item in walk(sr.ContentSequence) if concept(item) == ("125007", "DCM")]


def template_of(group: Dataset) -> str:
    return str(group.ContentTemplateSequence[0].TemplateIdentifier)


def probabilities_by_class(group: Dataset) -> dict[str, float]:
    out = {}
    for item in group.ContentSequence:
        if item.ValueType == "NUM" and concept(item) == ("122157", "DCM"):
            assert item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
            (which,) = [c for c in item.ContentSequence if concept(c) == ("121071", "DCM")]
            assert which.RelationshipType == "HAS CONCEPT MOD"
            out[which.ConceptCodeSequence[0].CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
    return out


def text_values(group: Dataset, code_value: str) -> list[str]:
    return [str(i.TextValue) for i in group.ContentSequence if i.ValueType == "TEXT" and concept(i)[0] == code_value]


@pytest.fixture(scope="module")
def source() -> Dataset:
    return thyroid_source()


@pytest.fixture(scope="module")
def report(source: Dataset) -> Dataset:
    return round_trip(build_report(thyroid_finding([source]), [source]))


def test_report_passes_dciodvfy_and_dsrdump(report: Dataset) -> None:
    assert dciodvfy_messages(report) == []
    dump = assert_dsrdump_parses(report)
    assert "TID 1500" in dump and "TID 1501" in dump and "TID 1410" in dump


def test_report_lands_in_the_source_study_as_an_unverified_preliminary_draft(report: Dataset, source: Dataset) -> None:
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"):
        assert report[keyword].value == source[keyword].value, keyword
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    assert report.SeriesNumber == SR_SERIES_NUMBER
    assert (report.PreliminaryFlag, report.VerificationFlag, report.CompletionFlag) == (
        "PRELIMINARY",
        "UNVERIFIED",
        "COMPLETE",
    )
    assert report.SeriesDescription.startswith("AI")
    assert "unverified" in report.SeriesDescription and "synthetic" in report.SeriesDescription


def test_report_references_the_source_as_evidence_and_in_the_classification(report: Dataset, source: Dataset) -> None:
    (study_item,) = report.CurrentRequestedProcedureEvidenceSequence
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == source.SeriesInstanceUID
    assert series_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "PertinentOtherEvidenceSequence" not in report
    classification = next(g for g in groups(report) if template_of(g) == "1501")
    images = [i for i in classification.ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [source.SOPInstanceUID]


def test_classification_carries_finding_site_procedure_and_every_probability(report: Dataset) -> None:
    classification = next(g for g in groups(report) if template_of(g) == "1501")
    by_concept = {concept(i): i for i in classification.ContentSequence if i.ValueType == "CODE"}
    assert by_concept[("121071", "DCM")].ConceptCodeSequence[0].CodeValue == "353295004"
    assert by_concept[("363698007", "SCT")].ConceptCodeSequence[0].CodeValue == "69748006"
    procedure = next(i for i in report.ContentSequence if concept(i) == ("121058", "DCM"))
    assert procedure.ConceptCodeSequence[0].CodeValue == "7562007"
    expected = {label.code.value: 100.0 * PROBABILITIES[label.key] for label in LABELS}
    assert probabilities_by_class(classification) == pytest.approx(expected, abs=1e-9)


def test_algorithm_identification_names_model_version_and_weights(report: Dataset) -> None:
    for group in groups(report):
        assert text_values(group, "111001") == ["thyroid-resnet34 (synthetic-trained)"]
        assert text_values(group, "111003") == ["0.1.0"]
        parameters = text_values(group, "111002")
        assert f"weights-sha256={WEIGHTS_SHA256}" in parameters
        assert any("synthetic" in p for p in parameters)
    ours = [e for e in report.ContributingEquipmentSequence if e.Manufacturer == "scintnode"]
    assert len(ours) == 1
    assert ours[0].ManufacturerModelName == "thyroid-resnet34"
    assert "thyroid-resnet34 0.1.0" in list(ours[0].SoftwareVersions)


def test_every_group_has_tracking_identifier_and_uid(report: Dataset) -> None:
    found = groups(report)
    assert [template_of(g) for g in found] == ["1501", "1410"]
    uids = []
    for group in found:
        assert len(text_values(group, "112039")) == 1
        (uid,) = [i.UID for i in group.ContentSequence if concept(i) == ("112040", "DCM")]
        uids.append(uid)
    assert len(set(uids)) == len(uids)


def test_hotspot_point_is_at_the_given_coordinates_and_frame() -> None:
    wb = whole_body_source()
    hotspots = (
        Hotspot(0, 2, 100.25, 700.75, 0.9, "Grad-CAM peak"),
        Hotspot(0, 1, 30.0, 40.0, 0.6, "Grad-CAM peak"),
    )
    finding = thyroid_finding([wb], hotspots=hotspots, frames=[2])
    sr = round_trip(build_report(finding, [wb]))
    assert_dciodvfy_clean(sr)
    assert_dsrdump_parses(sr)
    points = []
    for group in groups(sr):
        if template_of(group) != "1410":
            continue
        (scoord,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        assert scoord.GraphicType == "POINT"
        (image,) = [i for i in scoord.ContentSequence if i.ValueType == "IMAGE"]
        reference = image.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == wb.SOPInstanceUID
        points.append((*(float(v) for v in scoord.GraphicData), int(reference.ReferencedFrameNumber)))
        assert probabilities_by_class(group) == pytest.approx({"353295004": 81.25})
    assert points == [(100.25, 700.75, 2), (30.0, 40.0, 1)]
    classification = next(g for g in groups(sr) if template_of(g) == "1501")
    (image,) = [i for i in classification.ContentSequence if i.ValueType == "IMAGE"]
    assert list(np.atleast_1d(image.ReferencedSOPSequence[0].ReferencedFrameNumber)) == [2]


def test_other_studies_go_to_pertinent_other_evidence() -> None:
    current = thyroid_source(study("ACC-CURRENT"))
    earlier_input = thyroid_source(study("ACC-EARLIER"))
    other = thyroid_source(study("ACC-OTHER"))
    sr = round_trip(
        build_report(thyroid_finding([current, earlier_input]), [current, earlier_input], other_evidence=[other])
    )
    assert_dciodvfy_clean(sr)
    assert_dsrdump_parses(sr)
    assert sr.StudyInstanceUID == current.StudyInstanceUID
    assert sr.AccessionNumber == "ACC-CURRENT"
    (current_item,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert current_item.StudyInstanceUID == current.StudyInstanceUID
    other_studies = {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence}
    assert other_studies == {earlier_input.StudyInstanceUID, other.StudyInstanceUID}
    classification = next(g for g in groups(sr) if template_of(g) == "1501")
    referenced = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in classification.ContentSequence
        if i.ValueType == "IMAGE"
    }
    assert referenced == {current.SOPInstanceUID, earlier_input.SOPInstanceUID}


def test_superseding_report_lists_its_predecessor(source: Dataset, report: Dataset) -> None:
    newer = round_trip(build_report(thyroid_finding([source]), [source], predecessors=[report]))
    assert_dciodvfy_clean(newer)
    assert_dsrdump_parses(newer)
    (study_item,) = newer.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == report.StudyInstanceUID
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == report.SeriesInstanceUID
    assert series_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == report.SOPInstanceUID
    assert newer.SOPInstanceUID != report.SOPInstanceUID


def test_a_model_not_trained_on_synthetic_data_is_not_labelled_synthetic(source: Dataset) -> None:
    sr = build_report(thyroid_finding([source], synthetic=False), [source])
    assert "synthetic" not in sr.SeriesDescription
    assert text_values(groups(sr)[0], "111001") == ["thyroid-resnet34"]


def test_bad_findings_get_a_clear_message(source: Dataset) -> None:
    good = thyroid_finding([source])
    with pytest.raises(ValueError, match="sum to 1"):
        build_report(Finding(good.model, "graves", {**PROBABILITIES, "graves": 0.5}, ()), [source])
    with pytest.raises(ValueError, match="not one of"):
        build_report(Finding(good.model, "goitre", PROBABILITIES, ()), [source])
    with pytest.raises(ValueError, match="expected exactly"):
        build_report(Finding(good.model, "graves", {"graves": 1.0}, ()), [source])
    with pytest.raises(ValueError, match=r"frame 3 is outside 1\.\.1"):
        build_report(Finding(good.model, "graves", PROBABILITIES, (Hotspot(0, 3, 1, 1, 1, "x"),)), [source])
    with pytest.raises(ValueError, match="at least one source"):
        build_report(good, [])


def retired_class_thyroid_source() -> Dataset:
    """A thyroid scan stored as NM Image Storage (Retired), as older gamma cameras still send it."""
    source = thyroid_source()
    source.SOPClassUID = source.file_meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE_RETIRED
    return source


def test_a_source_of_the_retired_nm_sop_class_is_reported_as_nm() -> None:
    """Older gamma cameras still send NM Image Storage (Retired), 1.2.840.10008.5.1.4.1.1.5, which the node
    accepts; highdicom's modality table does not list it, so the report would fail without our mapping."""
    retired = retired_class_thyroid_source()
    sr = round_trip(build_report(thyroid_finding([retired]), [retired]))
    assert_dciodvfy_clean(sr)
    assert retired.SOPClassUID == "1.2.840.10008.5.1.4.1.1.5"  # the stand-in class went to highdicom, not here
    library = next(i for i in sr.ContentSequence if concept(i) == ("111028", "DCM"))  # Image Library
    entry = library.ContentSequence[0].ContentSequence[0]
    assert entry.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.5"
    modalities = [i for i in entry.ContentSequence if concept(i) == ("121139", "DCM")]  # Modality
    codes = [(m.ConceptCodeSequence[0].CodeValue, m.ConceptCodeSequence[0].CodingSchemeDesignator) for m in modalities]
    assert codes == [("NM", "DCM")]
