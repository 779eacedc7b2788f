"""The modules every result shares (Patient, General Study, General Series, General Equipment, SOP Common and
the file meta), set as highdicom's `SOPClass` constructor sets them for the arguments used here.

That constructor checks each argument against enumerations and IOD tables, writes the file meta to a buffer
to learn its length, and sets each attribute through pydicom one keyword at a time: about 0.5 ms of every
SR and SC. `start_document` sets the same attributes to the same values on a `SOPClass` whose own
constructor is skipped, so highdicom's methods (Contributing Equipment, the patient and study copy) still
work on it. The callers' tests hold the files equal to highdicom's: tests/test_write_sc_document.py
(`SCImage`) and tests/test_write_sr_document.py (`Comprehensive3DSR`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import highdicom as hd
from highdicom.enum import PatientSexValues
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.write.source_study import carry_character_set, study_arguments

_LONG_STRING = 64


@dataclass(frozen=True)
class Placement:
    """Where a result goes and who made it: its series, its instance and the equipment's manufacturer."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    manufacturer: str
    series_description: str


def start_document(
    document: hd.SOPClass,
    source: Dataset,
    placement: Placement,
    *,
    sop_class_uid: str,
    modality: str,
    manufacturer_model_name: str | None = None,
    software_versions: str | None = None,
) -> datetime.datetime:
    """Initialise ``document`` (whose `SOPClass.__init__` was not run) with the shared modules, Explicit VR
    Little Endian, for the patient and study of ``source`` (its first source), in the character set of
    ``source`` as it is (`carry_character_set`). Returns the moment it was made (Instance Creation and Content
    Date and Time)."""
    for name, text in (
        ("series description", placement.series_description),
        ("manufacturer", placement.manufacturer),
        ("model name", manufacturer_model_name or ""),
        ("software version", software_versions or ""),
    ):
        if len(text) > _LONG_STRING:
            raise ValueError(f"the {name} is longer than the {_LONG_STRING} characters LO holds: {text!r}")
    if placement.series_number < 1 or placement.instance_number < 1:
        raise ValueError(
            f"series and instance numbers start at 1, got {placement.series_number} and {placement.instance_number}"
        )
    Dataset.__init__(document)
    document.preamble = b"\x00" * 128
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = placement.sop_instance_uid
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    document.file_meta = meta
    study = study_arguments(source)
    sex = study["patient_sex"]
    document.PatientID = study["patient_id"]
    document.PatientName = study["patient_name"]
    document.PatientBirthDate = DA(study["patient_birth_date"])
    document.PatientSex = PatientSexValues(sex).value if sex not in (None, "") else sex
    document.StudyInstanceUID = str(study["study_instance_uid"])
    document.AccessionNumber = study["accession_number"]
    document.StudyID = study["study_id"]
    document.StudyDate = DA(study["study_date"]) if study["study_date"] is not None else None
    document.StudyTime = TM(study["study_time"]) if study["study_time"] is not None else None
    document.ReferringPhysicianName = study["referring_physician_name"]
    document.SeriesInstanceUID = str(placement.series_instance_uid)
    document.SeriesNumber = placement.series_number
    document.Modality = modality
    document.SeriesDescription = placement.series_description
    document.Manufacturer = placement.manufacturer
    if manufacturer_model_name is not None:
        document.ManufacturerModelName = manufacturer_model_name
    if software_versions is not None:
        document.SoftwareVersions = software_versions
    document.SOPInstanceUID = str(placement.sop_instance_uid)
    document.SOPClassUID = sop_class_uid
    document.InstanceNumber = placement.instance_number
    now = datetime.datetime.now()
    document.InstanceCreationDate = DA(now.date())
    document.InstanceCreationTime = TM(now.time())
    carry_character_set(document, source)
    document.ContentDate = DA(now.date())  # both IODs here have Content Date and Time
    document.ContentTime = TM(now.time())
    return now
