"""Builds CT Image Storage series (realistic headers + int16 pixels) for synthetic neck CT studies.

Sits under the CT phantom generator beside nm.py: it makes the DICOM a CT scanner would send, one
instance per slice, with the Contrast/Bolus module on the enhanced phase."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from scintnode.phantoms.nm import Equipment, Patient, StudyInfo, _patient_and_study

CT_SCANNER = Equipment(model="scintnode phantom CT", station="SYNCT01")


@dataclass(frozen=True)
class Contrast:
    """The Contrast/Bolus module of an enhanced series (dicom-conventions.md §3.6)."""

    agent: str = "Iohexol 350"
    route: str = "IV"
    volume_ml: float = 80.0
    start: datetime | None = None  # bolus start; before the acquisition for an enhanced phase
    ingredient: str = "IODINE"


def build_ct_series(
    hu: np.ndarray,
    *,
    patient: Patient,
    study: StudyInfo,
    series_uid: str,
    series_number: int,
    series_description: str,
    acquired: datetime,
    frame_of_reference_uid: str,
    spacing_mm: tuple[float, float, float] = (1.0, 0.8, 0.8),  # slice, row, column
    origin_mm: tuple[float, float, float] = (-100.0, -100.0, -80.0),  # x, y, z of the first voxel
    contrast: Contrast | None = None,
    body_part: str = "NECK",
    equipment: Equipment = CT_SCANNER,
) -> list[Dataset]:
    """One axial CT instance per slice of `hu` (slices, rows, columns) in Hounsfield units, feet-first z."""
    if hu.ndim != 3:
        raise ValueError(f"expected a volume (slices, rows, columns), got shape {hu.shape}")
    stored = np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16)  # rescale intercept -1024, 12 bits
    slices: list[Dataset] = []
    for index, plane in enumerate(stored):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _patient_and_study(ds, patient, study)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = acquired.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S")
        ds.BodyPartExamined = body_part
        ds.PatientPosition = "HFS"
        ds.Manufacturer = equipment.manufacturer
        ds.ManufacturerModelName = equipment.model
        ds.StationName = equipment.station
        ds.InstitutionName = equipment.institution
        ds.DeviceSerialNumber = equipment.serial
        ds.SoftwareVersions = equipment.software_versions
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = origin_mm[2] + index * spacing_mm[0]
        ds.ImagePositionPatient = [origin_mm[0], origin_mm[1], z]
        ds.SliceLocation = z
        ds.SliceThickness = spacing_mm[0]
        ds.PixelSpacing = [spacing_mm[1], spacing_mm[2]]
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        if contrast is not None:
            ds.ContrastBolusAgent = contrast.agent
            ds.ContrastBolusRoute = contrast.route
            ds.ContrastBolusVolume = contrast.volume_ml
            ds.ContrastBolusIngredient = contrast.ingredient
            if contrast.start is not None:
                ds.ContrastBolusStartTime = contrast.start.strftime("%H%M%S")
        ds.PixelData = plane.tobytes()
        slices.append(ds)
    return slices
