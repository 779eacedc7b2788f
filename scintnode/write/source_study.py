"""The patient and study a result joins, as the arguments highdicom's `SOPClass` takes: copied from the
source image (or first piece of evidence) the result is derived from. The SR, SEG and SC documents share it.

highdicom checks some of these values as it sets them, and raises on values cameras and anonymisers send: a
Patient's Sex other than M, F or O, a date or time not in DICOM's form (``19800230``, ``2026-12-07``), a
name of several values, a Specific Character Set it does not list (empty, ``ISO_IR 6``, or the standard
``\\ISO 2022 IR 87`` with its empty first value); a Type 2 attribute the source lacks raised here. One such
header cost a job all its results after its network had run. Such a value is now passed as empty, and each
document then copies the source's patient and study attributes as they are
(`copy_patient_and_study_information`) and its character set (`carry_character_set`), so the results carry
what the source carries and PACS files them beside it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from highdicom.enum import PatientSexValues
from highdicom.valuerep import (
    _check_specific_character_set,  # what SOPClass checks; highdicom is pinned
    check_person_name,
)
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, TM


def study_arguments(source: Dataset) -> dict[str, Any]:
    """Study, patient and character-set keyword arguments of `highdicom.SOPClass` for a result of `source`."""
    return {
        "study_instance_uid": source.StudyInstanceUID,
        "patient_id": source.get("PatientID"),
        "patient_name": _accepted(check_person_name, source.get("PatientName")),
        "patient_birth_date": _accepted(DA, source.get("PatientBirthDate")),
        "patient_sex": _accepted(PatientSexValues, source.get("PatientSex")),
        "accession_number": source.get("AccessionNumber"),
        "study_id": source.get("StudyID"),
        "study_date": _accepted(DA, source.get("StudyDate")),
        "study_time": _accepted(TM, source.get("StudyTime")),
        "referring_physician_name": _accepted(check_person_name, source.get("ReferringPhysicianName")),
        "specific_character_set": _accepted(_character_set_check, source.get("SpecificCharacterSet")),
    }


def carry_character_set(document: Dataset, source: Dataset) -> None:
    """Give ``document`` the source's Specific Character Set as it is, or none if the source has none: its
    copied text is in that set, and highdicom was given it only if it accepts it."""
    if "SpecificCharacterSet" in source:
        document.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    elif "SpecificCharacterSet" in document:
        del document.SpecificCharacterSet


def _character_set_check(value: object) -> object:
    return _check_specific_character_set(list(value) if isinstance(value, MultiValue | list) else value)


def _accepted(convert: Callable[[Any], object], value: object) -> object:
    """``value`` if highdicom's conversion takes it, else None (the verbatim copy afterwards keeps it)."""
    if value is None:
        return value
    try:
        convert(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return value
