"""Builds NM Image Storage objects (realistic headers + uint16 counts) for synthetic studies.

Sits under every phantom generator: they make the counts, this makes the DICOM that a gamma camera would send.

Every object built here passes ``dciodvfy`` with no errors (tests/test_nm_header.py). Example, a static
pertechnetate thyroid image and a 2-frame whole-body bone scan (anterior + posterior in one instance)::

    from datetime import date, datetime, timedelta

    import numpy as np
    from pydicom.uid import generate_uid

    from scintnode.phantoms import nm

    patient = nm.Patient("SYN0001", "SYNTHETIC^THYROID^01", date(1970, 5, 1), "F")
    study = nm.StudyInfo(generate_uid(), datetime(2024, 3, 1, 9, 30), accession="SYNACC0001",
                         description="NM thyroid scintigraphy (synthetic)")
    counts = np.zeros((1, 128, 128), dtype=np.uint16)        # (frames, rows, cols)
    ds = nm.build_nm_image(
        counts, patient=patient, study=study,
        series_uid=generate_uid(), series_number=1, series_description="THYROID ANT (synthetic)",
        agent="pertechnetate", views=("anterior",),
        acquired=study.start + timedelta(minutes=20), injected=study.start, dose_mbq=80.0,
        pixel_spacing_mm=(1.8, 1.8), body_part="THYROID",
    )
    nm.save(ds, "thyroid.dcm")

    wb = nm.build_nm_image(
        np.zeros((2, 1024, 256), dtype=np.uint16), patient=patient, study=study,
        series_uid=generate_uid(), series_number=2, series_description="WB BONE (synthetic)",
        agent="medronate", image_type="WHOLE BODY", views=("anterior", "posterior"),
        acquired=study.start + timedelta(hours=3), injected=study.start, dose_mbq=600.0,
        pixel_spacing_mm=(2.0, 2.0), body_part="WHOLEBODY", scan_velocity_mm_s=2.5,
    )

Frame i is acquired by detector i+1 and shows ``views[i]``. Options that imitate real cameras, for routing
tests: ``coding="SRT"`` writes the legacy SNOMED-RT codes old cameras send, ``coding="none"`` writes text
only; ``view_placement`` puts the View Code Sequence inside the Detector Information Sequence (standard),
at the top level (seen in the wild, a dciodvfy warning), in both places or nowhere. Use body part "NECK"
for parathyroid studies: dciodvfy counts "PARATHYROID" as paired and then demands a Laterality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid

from scintnode.models.spec import Code

ImageType = Literal["STATIC", "WHOLE BODY"]
Coding = Literal["SCT", "SRT", "none"]
ViewPlacement = Literal["detector", "top-level", "both", "none"]


@dataclass(frozen=True)
class CodedTerm:
    """A SNOMED CT concept with the legacy SNOMED-RT (SRT) value older cameras write for it."""

    sct: str
    srt: str
    meaning: str

    def code(self, coding: Coding) -> Code:
        if coding == "SRT":
            return Code(self.srt, "SRT", self.meaning)
        return Code(self.sct, "SCT", self.meaning)


@dataclass(frozen=True)
class EnergyWindow:
    name: str
    lower_kev: float
    upper_kev: float


@dataclass(frozen=True)
class Agent:
    """A radiopharmaceutical as the NM Isotope module describes it (dicom-conventions.md §3.2)."""

    key: str
    radiopharmaceutical: str  # free text (0018,0031), as cameras type it
    code: CodedTerm  # CID 25
    nuclide: CodedTerm  # CID 18
    window: EnergyWindow
    route: CodedTerm
    route_text: str


_TC99M = CodedTerm("72454006", "C-163A8", "^99m^Technetium")
_I131 = CodedTerm("1368003", "C-114B1", "^131^Iodine")
_I123 = CodedTerm("21572004", "C-114A4", "^123^Iodine")
_IV = CodedTerm("47625008", "G-D101", "Intravenous route")
_ORAL = CodedTerm("26643006", "G-D140", "Oral route")
_TC_WINDOW = EnergyWindow("TC99M", 126.0, 155.0)

AGENTS: dict[str, Agent] = {
    agent.key: agent
    for agent in (
        Agent(
            "pertechnetate",
            "Tc-99m Pertechnetate",
            CodedTerm("19495007", "C-B1206", "Sodium pertechnetate Tc^99m^"),
            _TC99M,
            _TC_WINDOW,
            _IV,
            "Intravenous",
        ),
        Agent(
            "sestamibi",
            "Tc-99m Sestamibi",
            CodedTerm("424299003", "C-163AB", "Technetium Tc^99m^ sestamibi"),
            _TC99M,
            _TC_WINDOW,
            _IV,
            "Intravenous",
        ),
        Agent(
            "tetrofosmin",
            "Tc-99m Tetrofosmin",
            CodedTerm("424118002", "C-163AD", "Technetium Tc^99m^ tetrofosmin"),
            _TC99M,
            _TC_WINDOW,
            _IV,
            "Intravenous",
        ),
        Agent(
            "medronate",
            "Tc-99m MDP",
            CodedTerm("96390006", "C-B1218", "Technetium Tc^99m^ medronate"),
            _TC99M,
            _TC_WINDOW,
            _IV,
            "Intravenous",
        ),
        Agent(
            "oxidronate",
            "Tc-99m HDP",
            CodedTerm("53951001", "C-B1213", "Technetium Tc^99m^ oxidronate"),
            _TC99M,
            _TC_WINDOW,
            _IV,
            "Intravenous",
        ),
        Agent(
            "i131-iodide",
            "I-131 Sodium Iodide",
            CodedTerm("111160004", "C-B1086", "Sodium iodide I^131^"),
            _I131,
            EnergyWindow("I131", 328.0, 400.0),
            _ORAL,
            "Oral",
        ),
        Agent(
            "i123-iodide",
            "I-123 Sodium Iodide",
            CodedTerm("67690002", "C-B1081", "Sodium iodide I^123^"),
            _I123,
            EnergyWindow("I123", 143.0, 175.0),
            _ORAL,
            "Oral",
        ),
    )
}


@dataclass(frozen=True)
class View:
    """A planar projection (CID 26) and how it lies in the image: Patient Orientation and row cosines."""

    key: str
    term: CodedTerm
    orientation: tuple[str, str]  # (0020,0020): direction of rows, direction of columns
    row_cosines: tuple[float, float, float]  # patient LPS direction of increasing column


_R2 = float(np.sqrt(0.5))
# Displayed as the camera sees the patient, head up: columns run towards the patient's side on the right.
VIEWS: dict[str, View] = {
    view.key: view
    for view in (
        View("anterior", CodedTerm("399321004", "G-5215", "Anterior projection"), ("L", "F"), (1, 0, 0)),
        View("posterior", CodedTerm("399001007", "G-5216", "Posterior projection"), ("R", "F"), (-1, 0, 0)),
        View("left lateral", CodedTerm("399118008", "G-5223", "Left lateral projection"), ("P", "F"), (0, 1, 0)),
        View(
            "right lateral",
            CodedTerm("399297009", "G-5222", "Right lateral projection"),
            ("A", "F"),
            (0, -1, 0),
        ),
        View("LAO", CodedTerm("399074003", "G-5207", "Left anterior oblique"), ("LP", "F"), (_R2, _R2, 0)),
        View("RAO", CodedTerm("399108003", "G-5206", "Right anterior oblique"), ("LA", "F"), (_R2, -_R2, 0)),
        View("LPO", CodedTerm("399136008", "G-5209", "Left posterior oblique"), ("RP", "F"), (-_R2, _R2, 0)),
        View("RPO", CodedTerm("399075002", "G-5208", "Right posterior oblique"), ("RA", "F"), (-_R2, -_R2, 0)),
    )
}

_RECUMBENT = CodedTerm("102538003", "F-10450", "recumbent")
_SUPINE = CodedTerm("40199007", "F-10340", "supine")
_HEADFIRST = CodedTerm("102540008", "F-10470", "headfirst")


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str  # DICOM person name, e.g. "SYNTHETIC^THYROID^01"
    birth_date: date | None
    sex: Literal["F", "M", "O", ""]
    issuer_of_patient_id: str | None = None


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    start: datetime  # Study Date/Time
    accession: str
    description: str
    study_id: str = "1"
    referring_physician: str = ""


@dataclass(frozen=True)
class Equipment:
    manufacturer: str = "SYNTHETIC"
    model: str = "scintnode phantom camera"
    station: str = "SYNNM01"
    institution: str = "Synthetic Hospital"
    serial: str = "SYN-0001"
    software_versions: str = "scintnode-phantoms 1"


def synthetic_patient(
    patient_id: str, cohort: str, index: int, rng: np.random.Generator, born: tuple[int, int], female_share: float
) -> Patient:
    """A synthetic patient of a phantom cohort: a birth date drawn from the years `born` (end excluded) and the
    sex by the cohort's share of women (the papers' cohorts), named SYNTHETIC^<cohort>^<index>."""
    birth = date(int(rng.integers(*born)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    return Patient(
        patient_id=patient_id,
        name=f"SYNTHETIC^{cohort}^{index:04d}",
        birth_date=birth,
        sex="F" if rng.random() < female_share else "M",
    )


def find_agent(key: str) -> Agent:
    """The agent called ``key``, with an error that lists the known ones."""
    try:
        return AGENTS[key]
    except KeyError:
        raise ValueError(f"unknown agent {key!r}; known: {', '.join(sorted(AGENTS))}") from None


def find_view(key: str) -> View:
    try:
        return VIEWS[key]
    except KeyError:
        raise ValueError(f"unknown view {key!r}; known: {', '.join(VIEWS)}") from None


def build_nm_image(
    frames: np.ndarray,
    *,
    patient: Patient,
    study: StudyInfo,
    series_uid: str,
    series_number: int,
    series_description: str,
    agent: str | Agent,
    acquired: datetime,
    views: Sequence[str] = ("anterior",),
    image_type: ImageType = "STATIC",
    injected: datetime | None = None,
    dose_mbq: float | None = None,
    frame_duration_ms: int | None = None,
    scan_velocity_mm_s: float | None = None,
    pixel_spacing_mm: tuple[float, float] = (2.0, 2.0),
    body_part: str | None = None,
    equipment: Equipment = Equipment(),
    collimator: tuple[str, str] = ("LEHR", "PARA"),
    coding: Coding = "SCT",
    view_placement: ViewPlacement = "detector",
    protocol_name: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    start_datetime_attribute: bool = False,
    character_set: str = "ISO_IR 100",
) -> Dataset:
    """One NM Image Storage dataset; frame i is detector i+1 looking from ``views[i]``.

    ``frames`` are counts (n, rows, cols) uint16. STATIC defaults to a 5-minute frame; WHOLE BODY derives
    the scan length from rows x row spacing and needs a frame duration or a scan velocity (default
    2 mm/s). ``collimator`` is (name, type) with type PARA/PINH/... ``start_datetime_attribute`` adds
    Radiopharmaceutical Start DateTime (0018,1078), which some vendors send though NM does not define it.
    ``character_set`` defaults to Latin-1 as most cameras send; "ISO_IR 192" (UTF-8) works too, but DCMTK
    dsrdump then warns on every SR derived from the image (its VR checker does not support UTF-8).
    """
    pixels = _checked_frames(frames)
    n_frames, rows, _ = pixels.shape
    if len(views) != n_frames:
        raise ValueError(f"{n_frames} frame(s) need {n_frames} view(s) (one per detector), got {list(views)}")
    frame_views = [find_view(key) for key in views]
    spec = find_agent(agent) if isinstance(agent, str) else agent
    if image_type not in ("STATIC", "WHOLE BODY"):
        raise ValueError(f"image_type must be 'STATIC' or 'WHOLE BODY', got {image_type!r}")
    if injected is not None and injected > acquired:
        raise ValueError(f"injection {injected} is after acquisition {acquired}")

    ds = Dataset()
    _patient_and_study(ds, patient, study)
    sop_uid = sop_instance_uid or generate_uid()
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = character_set
    ds.InstanceCreationDate = _da(acquired)
    ds.InstanceCreationTime = _tm(acquired)

    ds.Modality = "NM"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = _da(acquired)
    ds.SeriesTime = _tm(acquired)
    if body_part:
        ds.BodyPartExamined = body_part
    if protocol_name:
        ds.ProtocolName = protocol_name

    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model
    ds.StationName = equipment.station
    ds.InstitutionName = equipment.institution
    ds.DeviceSerialNumber = equipment.serial
    ds.SoftwareVersions = equipment.software_versions

    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "EMISSION"]
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = list(frame_views[0].orientation)
    ds.ContentDate = _da(acquired)
    ds.ContentTime = _tm(acquired)
    ds.AcquisitionDate = _da(acquired)
    ds.AcquisitionTime = _tm(acquired)
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S.%f")
    ds.AcquisitionContextSequence = DicomSequence()
    ds.LossyImageCompression = "00"

    ds.PatientOrientationCodeSequence = [_code_item(_RECUMBENT, coding)]
    ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = [_code_item(_SUPINE, coding)]
    ds.PatientGantryRelationshipCodeSequence = [_code_item(_HEADFIRST, coding)]

    _pixel_module(ds, pixels, pixel_spacing_mm)
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = [Tag(0x0054, 0x0010), Tag(0x0054, 0x0020)]
    ds.EnergyWindowVector = [1] * n_frames
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = list(range(1, n_frames + 1))
    ds.NumberOfDetectors = n_frames

    duration_ms = _timing(ds, image_type, rows, pixel_spacing_mm, frame_duration_ms, scan_velocity_mm_s)
    ds.ActualFrameDuration = duration_ms
    ds.CountsAccumulated = int(pixels.sum(dtype=np.uint64))
    ds.AcquisitionTerminationCondition = "TIME"

    _isotope(ds, spec, coding, acquired, injected, dose_mbq, start_datetime_attribute)
    ds.DetectorInformationSequence = [
        _detector_item(frame_view, collimator, coding, view_placement in ("detector", "both"))
        for frame_view in frame_views
    ]
    if view_placement in ("top-level", "both"):
        ds.ViewCodeSequence = [_code_item(frame_views[0].term, coding)]

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def save(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part-10 file (preamble, file meta, Explicit VR Little Endian)."""
    target = Path(path)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


def _checked_frames(frames: np.ndarray) -> np.ndarray:
    array = np.asarray(frames)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"frames must be (n, rows, cols), got shape {array.shape}")
    if array.dtype != np.uint16:
        raise ValueError(f"frames must be uint16 counts, got {array.dtype}")
    return np.ascontiguousarray(array)


def _patient_and_study(ds: Dataset, patient: Patient, study: StudyInfo) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex
    if patient.birth_date:
        ds.PatientAge = f"{_age_years(patient.birth_date, study.start.date()):03d}Y"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = _da(study.start)
    ds.StudyTime = _tm(study.start)
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    ds.StudyID = study.study_id
    ds.ReferringPhysicianName = study.referring_physician


def _age_years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _pixel_module(ds: Dataset, pixels: np.ndarray, spacing: tuple[float, float]) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = pixels.shape[1]
    ds.Columns = pixels.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    ds.PixelData = pixels.astype("<u2").tobytes()


def _timing(
    ds: Dataset,
    image_type: ImageType,
    rows: int,
    spacing: tuple[float, float],
    frame_duration_ms: int | None,
    scan_velocity_mm_s: float | None,
) -> int:
    """Frame duration in ms; for WHOLE BODY also the Type 2C scan attributes, kept consistent."""
    if image_type == "STATIC":
        return frame_duration_ms if frame_duration_ms is not None else 300_000
    scan_length_mm = rows * spacing[0]
    if scan_velocity_mm_s is None:
        scan_velocity_mm_s = scan_length_mm / (frame_duration_ms / 1000.0) if frame_duration_ms else 2.0
    if scan_velocity_mm_s <= 0:
        raise ValueError(f"scan velocity must be positive, got {scan_velocity_mm_s}")
    ds.ScanVelocity = f"{scan_velocity_mm_s:.4g}"
    ds.ScanLength = round(scan_length_mm)
    ds.WholeBodyTechnique = "1PS"
    if frame_duration_ms is not None:
        return frame_duration_ms
    return round(scan_length_mm / scan_velocity_mm_s * 1000.0)


def _isotope(
    ds: Dataset,
    spec: Agent,
    coding: Coding,
    acquired: datetime,
    injected: datetime | None,
    dose_mbq: float | None,
    start_datetime_attribute: bool,
) -> None:
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit = f"{spec.window.lower_kev:g}"
    window_range.EnergyWindowUpperLimit = f"{spec.window.upper_kev:g}"
    window = Dataset()
    window.EnergyWindowRangeSequence = [window_range]
    window.EnergyWindowName = spec.window.name
    ds.EnergyWindowInformationSequence = [window]

    item = Dataset()
    item.RadionuclideCodeSequence = [] if coding == "none" else [_code_item(spec.nuclide, coding)]
    item.Radiopharmaceutical = spec.radiopharmaceutical
    item.RadiopharmaceuticalRoute = spec.route_text
    if coding != "none":
        item.RadiopharmaceuticalCodeSequence = [_code_item(spec.code, coding)]
        item.AdministrationRouteCodeSequence = [_code_item(spec.route, coding)]
    if dose_mbq is not None:
        item.RadionuclideTotalDose = f"{dose_mbq:g}"
    if injected is not None:
        item.RadiopharmaceuticalStartTime = _tm(injected)
        if start_datetime_attribute:
            item.RadiopharmaceuticalStartDateTime = injected.strftime("%Y%m%d%H%M%S")
    ds.RadiopharmaceuticalInformationSequence = [item]


def _detector_item(frame_view: View, collimator: tuple[str, str], coding: Coding, with_view: bool) -> Dataset:
    item = Dataset()
    item.CollimatorGridName = collimator[0]
    item.CollimatorType = collimator[1]
    item.FieldOfViewShape = "RECTANGLE"
    item.FocalDistance = None
    item.ImageOrientationPatient = [f"{v:.6g}" for v in (*frame_view.row_cosines, 0.0, 0.0, -1.0)]
    item.ImagePositionPatient = None
    if with_view:
        item.ViewCodeSequence = [_code_item(frame_view.term, coding)]
    return item


def _code_item(term: CodedTerm, coding: Coding) -> Dataset:
    code = term.code(coding)
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S")
