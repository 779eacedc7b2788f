"""The patient and study a result joins, as the arguments highdicom's `SOPClass` takes: copied from the
source image (or first piece of evidence) the result is derived from. The SR and SEG documents share it."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset


def study_arguments(source: Dataset) -> dict[str, Any]:
    """Study, patient and character-set keyword arguments of `highdicom.SOPClass` for a result of `source`."""
    return {
        "study_instance_uid": source.StudyInstanceUID,
        "patient_id": source.PatientID,
        "patient_name": source.PatientName,
        "patient_birth_date": source.PatientBirthDate,
        "patient_sex": source.PatientSex,
        "accession_number": source.AccessionNumber,
        "study_id": source.StudyID,
        "study_date": source.StudyDate,
        "study_time": source.StudyTime,
        "referring_physician_name": source.get("ReferringPhysicianName"),
        "specific_character_set": source.get("SpecificCharacterSet"),
    }
