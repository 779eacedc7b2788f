"""The acquisition equipment entry of our SRs and SCs equals highdicom's `for_image_acquisition`, without its
IOD table scan, on synthetic NM and CT sources."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, config
from pydicom.uid import generate_uid

from scintnode.phantoms.ct import build_ct_series
from scintnode.phantoms.nm import Patient, StudyInfo
from scintnode.write import build_heatmap_sc
from scintnode.write.equipment import acquisition_equipment
from scintnode.write.sr import contributing_equipment
from tests.test_nm_header import thyroid_source, whole_body_source
from tests.test_write_sr import thyroid_finding


def _ct_slice() -> Dataset:
    patient = Patient("SYNEQ", "SYNTHETIC^EQUIPMENT", dt.date(1970, 1, 1), "M")
    study = StudyInfo(generate_uid(), dt.datetime(2026, 3, 3, 10, 0), accession="SYNEQ1", description="(synthetic)")
    return build_ct_series(
        np.zeros((2, 8, 8)),
        patient=patient,
        study=study,
        series_uid=generate_uid(),
        series_number=2,
        series_description="NECK (synthetic)",
        acquired=dt.datetime(2026, 3, 3, 10, 2),
        frame_of_reference_uid=generate_uid(),
    )[0]


def _with_acquisition_moment(source: Dataset) -> Dataset:
    dated = Dataset(source)
    dated.AcquisitionDateTime = "20260303100215.5"
    dated.StationName = "CAMERA1"
    dated.InstitutionName = "Synthetic Hospital"
    return dated


@pytest.mark.parametrize(
    "make", [thyroid_source, whole_body_source, _ct_slice, lambda: _with_acquisition_moment(thyroid_source())]
)
def test_entry_equals_highdicoms(make: object) -> None:
    source = make()  # type: ignore[operator]
    assert source.Manufacturer
    ours = acquisition_equipment(source)
    assert ours is not None
    assert ours == hd.ContributingEquipment.for_image_acquisition(source)


def test_date_and_time_objects_become_the_contribution_moment_as_in_highdicom() -> None:
    source = thyroid_source()
    if "AcquisitionDateTime" in source:
        del source.AcquisitionDateTime
    with config.disable_value_validation():
        config.datetime_conversion = True
        try:
            source.AcquisitionDate = "20260303"
            source.AcquisitionTime = "101500"
            theirs = hd.ContributingEquipment.for_image_acquisition(source)
            ours = acquisition_equipment(source)
        finally:
            config.datetime_conversion = False
    assert ours is not None and "ContributionDateTime" in theirs
    assert ours == theirs


def test_no_manufacturer_no_entry_where_highdicom_refuses() -> None:
    source = thyroid_source()
    source.Manufacturer = ""
    assert acquisition_equipment(source) is None
    with pytest.raises(AttributeError):
        hd.ContributingEquipment.for_image_acquisition(source)


def test_sc_lists_the_camera_scintnode_and_highdicom_as_highdicoms_from_ref_dataset_would() -> None:
    source = thyroid_source()
    finding = thyroid_finding([source])
    sc = build_heatmap_sc(finding, [source], 0)
    camera, ours, library = sc.ContributingEquipmentSequence
    assert camera == hd.ContributingEquipment.for_image_acquisition(source)
    assert ours == contributing_equipment(finding.model)
    assert library.ManufacturerModelName == "highdicom"  # highdicom adds itself, with the moment it ran
