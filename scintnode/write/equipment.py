"""The Contributing Equipment entry for the camera or scanner that acquired a result's source image.

highdicom's `ContributingEquipment.for_image_acquisition` first asks whether the source's SOP class has pixel
data by scanning its IOD tables: about 1.1 ms a call, paid once per SR and once per SC of every job. Every
source here is an image a network has just decoded, so `acquisition_equipment` builds the same entry
without that scan. tests/test_write_equipment.py holds it equal to highdicom's for NM and CT sources.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

_DESCRIPTION = "Acquisition equipment of the source image(s)"  # highdicom's wording


def acquisition_equipment(source: Dataset) -> hd.ContributingEquipment | None:
    """The acquiring device of ``source`` as highdicom describes it; None without a Manufacturer (Type 2,
    may be empty) or with a value highdicom refuses, where its SOP classes leave the entry out."""
    manufacturer = source.get("Manufacturer")
    if not manufacturer:
        return None
    when = source.get("AcquisitionDateTime")
    if when is None:
        date, time = source.get("AcquisitionDate"), source.get("AcquisitionTime")
        # pydicom gives datetime objects only when its datetime conversion is on; highdicom reads them alike
        if isinstance(date, datetime.date) and isinstance(time, datetime.time):
            when = datetime.datetime.combine(date, time)
    try:
        return _entry(source, manufacturer, when)
    except (ValueError, TypeError):  # e.g. a Station Name over SH's 16 characters: left out, as highdicom does
        return None


def _entry(source: Dataset, manufacturer: str, when: datetime.datetime | None) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.AcquisitionEquipment,
        manufacturer_model_name=source.get("ManufacturerModelName"),
        software_versions=source.get("SoftwareVersions"),
        device_serial_number=source.get("DeviceSerialNumber"),
        institution_name=source.get("InstitutionName"),
        institutional_department_name=source.get("InstitutionalDepartmentName"),
        institution_address=source.get("InstitutionAddress"),
        station_name=source.get("StationName"),
        contribution_datetime=when,
        contribution_description=_DESCRIPTION,
    )


def acquisition_first(source: Dataset, others: Sequence[hd.ContributingEquipment]) -> list[hd.ContributingEquipment]:
    """``others`` after the acquiring device of ``source`` (if it names one), in highdicom's order."""
    acquisition = acquisition_equipment(source)
    return [acquisition, *others] if acquisition is not None else list(others)
