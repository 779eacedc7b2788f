"""Tests of the synthetic NM header builder: every object it makes must pass dciodvfy and read back intact.

Also home of the small NM sources the writer tests build their findings on."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scintnode.phantoms import nm
from tests.dicom_validation import assert_dciodvfy_clean, dciodvfy_messages

PATIENT = nm.Patient("SYN0001", "SYNTHETIC^THYROID^01", date(1970, 5, 1), "F", issuer_of_patient_id="SYNTH")
START = datetime(2024, 3, 1, 9, 30)


def study(accession: str = "SYNACC0001", start: datetime = START) -> nm.StudyInfo:
    return nm.StudyInfo(generate_uid(), start, accession=accession, description="NM thyroid (synthetic)")


def thyroid_source(study_info: nm.StudyInfo | None = None, **options: Any) -> Dataset:
    """A 1-frame 128x128 pertechnetate anterior thyroid image, Poisson counts on two blobs."""
    study_info = study_info or study()
    yy, xx = np.mgrid[0:128, 0:128]
    lobes = np.exp(-((xx - 50) ** 2 + (yy - 64) ** 2) / 120.0) + np.exp(-((xx - 78) ** 2 + (yy - 64) ** 2) / 120.0)
    counts = np.random.default_rng(1).poisson(5 + 200 * lobes).astype(np.uint16)[np.newaxis]
    arguments: dict[str, Any] = {
        "patient": PATIENT,
        "study": study_info,
        "series_uid": generate_uid(),
        "series_number": 1,
        "series_description": "THYROID ANT (synthetic)",
        "agent": "pertechnetate",
        "views": ("anterior",),
        "acquired": study_info.start + timedelta(minutes=20),
        "injected": study_info.start,
        "dose_mbq": 80.0,
        "pixel_spacing_mm": (1.8, 1.8),
        "body_part": "THYROID",
        "collimator": ("PINHOLE", "PINH"),
    }
    arguments.update(options)
    return nm.build_nm_image(counts, **arguments)


def whole_body_source(study_info: nm.StudyInfo | None = None) -> Dataset:
    """A 2-frame 1024x256 MDP whole-body image: anterior (frame 1) and posterior (frame 2)."""
    study_info = study_info or study()
    counts = np.random.default_rng(2).poisson(8, (2, 1024, 256)).astype(np.uint16)
    return nm.build_nm_image(
        counts,
        patient=PATIENT,
        study=study_info,
        series_uid=generate_uid(),
        series_number=2,
        series_description="WB BONE (synthetic)",
        agent="medronate",
        image_type="WHOLE BODY",
        views=("anterior", "posterior"),
        acquired=study_info.start + timedelta(hours=3),
        injected=study_info.start,
        dose_mbq=650.0,
        pixel_spacing_mm=(1.9, 1.9),
        body_part="WHOLEBODY",
        scan_velocity_mm_s=2.4,
    )


def round_trip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def test_static_thyroid_passes_dciodvfy_without_any_message(tmp_path: Path) -> None:
    path = nm.save(thyroid_source(), tmp_path / "thyroid.dcm")
    assert dciodvfy_messages(path) == []
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.preamble is not None


def test_static_thyroid_header_and_pixels_read_back() -> None:
    built = thyroid_source()
    ds = round_trip(built)
    assert ds.Modality == "NM"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    assert ds.NumberOfFrames == 1
    assert list(ds.FrameIncrementPointer) == [Tag(0x0054, 0x0010), Tag(0x0054, 0x0020)]
    assert ds.PatientID == "SYN0001" and ds.IssuerOfPatientID == "SYNTH"
    assert list(ds.PatientOrientation) == ["L", "F"]
    assert ds.ActualFrameDuration == 300_000
    isotope = ds.RadiopharmaceuticalInformationSequence[0]
    assert (
        isotope.RadiopharmaceuticalCodeSequence[0].CodeValue,
        isotope.RadionuclideCodeSequence[0].CodeValue,
    ) == (
        "19495007",
        "72454006",
    )
    assert isotope.RadiopharmaceuticalStartTime == "093000"
    window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    assert (float(window.EnergyWindowLowerLimit), float(window.EnergyWindowUpperLimit)) == (126.0, 155.0)
    view = ds.DetectorInformationSequence[0].ViewCodeSequence[0]
    assert (view.CodeValue, view.CodingSchemeDesignator) == ("399321004", "SCT")
    assert ds.pixel_array.shape == (128, 128)
    assert np.array_equal(ds.pixel_array, np.frombuffer(built.PixelData, dtype="<u2").reshape(128, 128))
    assert ds.CountsAccumulated == int(ds.pixel_array.sum())


def test_whole_body_two_frames_pass_dciodvfy_and_carry_both_views(tmp_path: Path) -> None:
    path = nm.save(whole_body_source(), tmp_path / "wb.dcm")
    assert dciodvfy_messages(path) == []
    ds = dcmread(path)
    assert ds.pixel_array.shape == (2, 1024, 256)
    assert list(ds.DetectorVector) == [1, 2] and ds.NumberOfDetectors == 2
    views = [item.ViewCodeSequence[0].CodeMeaning for item in ds.DetectorInformationSequence]
    assert views == ["Anterior projection", "Posterior projection"]
    assert ds.ScanLength == round(1024 * 1.9)
    assert float(ds.ScanVelocity) == 2.4
    assert ds.ActualFrameDuration == round(1024 * 1.9 / 2.4 * 1000)
    assert ds.WholeBodyTechnique == "1PS"


@pytest.mark.parametrize("key", sorted(nm.AGENTS))
def test_every_agent_builds_a_valid_object(key: str) -> None:
    ds = thyroid_source(agent=key, body_part="NECK")
    assert_dciodvfy_clean(ds)
    assert ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0].CodeValue == (
        nm.AGENTS[key].code.sct
    )


def test_i131_window_brackets_364_kev() -> None:
    window = nm.find_agent("i131-iodide").window
    assert window.lower_kev < 364.0 < window.upper_kev


def test_legacy_srt_coding_is_written_and_still_valid() -> None:
    ds = thyroid_source(coding="SRT")
    assert_dciodvfy_clean(ds)
    isotope = ds.RadiopharmaceuticalInformationSequence[0]
    assert (
        isotope.RadiopharmaceuticalCodeSequence[0].CodeValue,
        isotope.RadiopharmaceuticalCodeSequence[0].CodingSchemeDesignator,
    ) == ("C-B1206", "SRT")
    assert isotope.RadionuclideCodeSequence[0].CodeValue == "C-163A8"
    assert ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeValue == "G-5215"


def test_text_only_coding_leaves_the_type_2_nuclide_sequence_empty() -> None:
    ds = round_trip(thyroid_source(coding="none"))
    assert_dciodvfy_clean(ds)
    isotope = ds.RadiopharmaceuticalInformationSequence[0]
    assert len(isotope.RadionuclideCodeSequence) == 0
    assert "RadiopharmaceuticalCodeSequence" not in isotope
    assert isotope.Radiopharmaceutical == "Tc-99m Pertechnetate"


@pytest.mark.parametrize(
    ("placement", "in_detector", "top_level"),
    [("detector", True, False), ("top-level", False, True), ("both", True, True), ("none", False, False)],
)
def test_view_code_placement(placement: nm.ViewPlacement, in_detector: bool, top_level: bool) -> None:
    ds = thyroid_source(view_placement=placement)
    assert_dciodvfy_clean(ds)
    assert ("ViewCodeSequence" in ds.DetectorInformationSequence[0]) is in_detector
    assert ("ViewCodeSequence" in ds) is top_level


def test_bad_input_gets_a_clear_message() -> None:
    with pytest.raises(ValueError, match="uint16"):
        nm.build_nm_image(
            np.zeros((1, 8, 8), dtype=np.float32),
            patient=PATIENT,
            study=study(),
            series_uid=generate_uid(),
            series_number=1,
            series_description="x",
            agent="pertechnetate",
            acquired=START,
        )
    with pytest.raises(ValueError, match=r"1 frame\(s\) need 1 view"):
        thyroid_source(views=("anterior", "posterior"))
    with pytest.raises(ValueError, match="unknown agent 'thallium'"):
        thyroid_source(agent="thallium")
    with pytest.raises(ValueError, match="unknown view"):
        thyroid_source(views=("superior",))
    with pytest.raises(ValueError, match="after acquisition"):
        thyroid_source(injected=START + timedelta(days=1))
