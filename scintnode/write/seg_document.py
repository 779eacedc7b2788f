"""The BINARY Segmentation of a label mask drawn on a series of single-frame CT slices.

highdicom's `Segmentation` constructor handles every kind of source and mask, and pays for it: for a
clinical-size CT (200 slices of 512 x 512) it took 160-600 ms, scanning its IOD tables once per source slice,
building a highdicom object per plane, testing every (slice, segment) plane of the 50-million-voxel mask for
pixels, and building lookup tables for reading the result back. `BinarySegmentation` fills the same modules
through highdicom's documented extension point (`highdicom.SOPClass`, its patient, study and specimen copying,
its Contributing Equipment, with the camera's entry from write/equipment.py) and writes the rest directly,
taking the frames that hold a segment from the mask's per-slice voxel counts (finding.VolumeMask).
`tests/test_write_seg.py` requires its output to equal the constructor's, element by element and byte by byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage
from pydicom.valuerep import DS, format_number_as_ds

from scintnode.write.equipment import acquisition_first
from scintnode.write.source_study import carry_character_set, study_arguments

# highdicom's codes for how each frame derives from its slice (seg/sop.py and image.py)
_DERIVATION = hd.sr.CodedConcept.from_code(codes.cid7203.SegmentationImageDerivation)
_PURPOSE = hd.sr.CodedConcept.from_code(codes.cid7202.SourceImageForImageProcessingOperation)
_LABEL_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.uint16))
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")

_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_PURPOSE_OF_REFERENCE_CODE_SEQUENCE = 0x0040A170
_SPATIAL_LOCATIONS_PRESERVED = 0x0028135A
_DIMENSION_INDEX_VALUES = 0x00209157
_FRAME_CONTENT_SEQUENCE = 0x00209111
_PLANE_POSITION_SEQUENCE = 0x00209113
_IMAGE_POSITION_PATIENT = 0x00200032
_DERIVATION_CODE_SEQUENCE = 0x00089215
_SOURCE_IMAGE_SEQUENCE = 0x00082112
_DERIVATION_IMAGE_SEQUENCE = 0x00089124
_SEGMENT_IDENTIFICATION_SEQUENCE = 0x0062000A
_REFERENCED_SEGMENT_NUMBER = 0x0062000B


class BinarySegmentation(hd.SOPClass):  # type: ignore[misc]  # highdicom is not followed (pyproject)
    """A BINARY SEG of ``labels`` (slices, rows, columns: 0 background, n segment n) over ``source_images``,
    the single-frame slices of one series under the mask's slices in mask order, as highdicom's
    `Segmentation` writes it with ``omit_empty_frames`` and Explicit VR Little Endian.

    ``voxels_per_slice[k, n]`` is the number of voxels of segment n on slice k (finding.VolumeMask's); only
    the frames it counts are compared with the mask. ``segment_descriptions`` are numbered 1..n in order.
    Sources outside that case (multi-frame, without a patient frame of reference, of other series, sizes or
    orientations) raise ValueError."""

    def __init__(
        self,
        source_images: Sequence[Dataset],
        labels: np.ndarray,
        voxels_per_slice: np.ndarray,
        segment_descriptions: Sequence[hd.seg.SegmentDescription],
        *,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        instance_number: int,
        manufacturer: str,
        manufacturer_model_name: str,
        software_versions: str | Sequence[str],
        device_serial_number: str,
        series_description: str,
        contributing_equipment: Sequence[hd.ContributingEquipment] = (),
    ) -> None:
        numbers = _check_inputs(source_images, labels, voxels_per_slice, segment_descriptions)
        first = source_images[0]
        super().__init__(
            **study_arguments(first),
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            sop_class_uid=SegmentationStorage,
            manufacturer=manufacturer,
            modality="SEG",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            manufacturer_model_name=manufacturer_model_name,
            device_serial_number=device_serial_number,
            software_versions=software_versions,
            series_description=series_description,
        )
        carry_character_set(self, first)
        self.copy_specimen_information(first)
        self.copy_patient_and_study_information(first)
        self._add_contributing_equipment(acquisition_first(first, contributing_equipment))

        self.SegmentationType = "BINARY"
        self.ContentLabel = f"{first.Modality}_SEG"
        self.ContentDescription = None
        self.SegmentsOverlap = "NO"  # a label map cannot overlap
        self.SegmentSequence = list(segment_descriptions)

        self.FrameOfReferenceUID = first.FrameOfReferenceUID
        self.PositionReferenceIndicator = first.get("PositionReferenceIndicator")
        self.BitsAllocated = 1
        self.SamplesPerPixel = 1
        self.PhotometricInterpretation = "MONOCHROME2"
        self.BitsStored = 1
        self.HighBit = 0
        self.PixelRepresentation = 0
        self.ImageType = ["DERIVED", "PRIMARY"]
        self.PresentationLUTShape = "IDENTITY"
        self.SourceImageSequence, self.ReferencedSeriesSequence = _references(source_images)
        self.LossyImageCompression = first.get("LossyImageCompression", "00")
        if self.LossyImageCompression == "01":
            for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
                if keyword in first:
                    setattr(self, keyword, getattr(first, keyword))
        self.Rows, self.Columns = int(labels.shape[1]), int(labels.shape[2])

        organization = hd.UID()
        self.DimensionIndexSequence = [
            _dimension_index(
                _REFERENCED_SEGMENT_NUMBER, _SEGMENT_IDENTIFICATION_SEQUENCE, organization, "Referenced Segment Number"
            ),
            _dimension_index(_IMAGE_POSITION_PATIENT, _PLANE_POSITION_SEQUENCE, organization, "Image Position Patient"),
        ]
        dimension_organization = Dataset()
        dimension_organization.DimensionOrganizationUID = organization
        self.DimensionOrganizationSequence = [dimension_organization]

        orientation = first.ImageOrientationPatient
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in source_images], dtype=np.float64)
        shared = Dataset()
        shared.PlaneOrientationSequence = hd.PlaneOrientationSequence("PATIENT", orientation)
        measures = hd.PixelMeasuresSequence(
            pixel_spacing=first.PixelSpacing,
            slice_thickness=first.SliceThickness,
            spacing_between_slices=first.get("SpacingBetweenSlices"),
        )
        if "SpacingBetweenSlices" not in measures[0]:
            # highdicom's: the spacing of all slices, so that a reader can rebuild the volume around omitted ones
            spacing, _ = hd.spatial.get_volume_positions(positions, orientation)
            if spacing is not None:
                measures[0].SpacingBetweenSlices = format_number_as_ds(spacing)
        shared.PixelMeasuresSequence = measures
        if len(numbers) == 1:
            shared.add(DataElement(_SEGMENT_IDENTIFICATION_SEQUENCE, "SQ", [_segment_identification(numbers[0])]))
        self.SharedFunctionalGroupsSequence = [shared]

        present = _presence(voxels_per_slice, labels.shape[0], numbers)
        occupied = np.flatnonzero(present.any(axis=1))
        omit = occupied.size > 0  # highdicom keeps every frame of a mask with no voxel at all
        included = occupied if omit else np.arange(labels.shape[0])
        in_order = _slice_order(positions, orientation)
        kept = np.zeros(labels.shape[0], dtype=bool)
        kept[included] = True
        ordered = [int(k) for k in in_order if kept[k]]

        # highdicom declares 3D only for one segment whose kept frames are evenly spaced, in mask order
        if len(included) > 1 and len(numbers) == 1:
            spacing, _ = hd.spatial.get_volume_positions(positions[included], orientation, sort=False)
            if spacing is not None and spacing > 0.0:
                self.DimensionOrganizationType = "3D"

        frames: list[tuple[int, int]] = []  # (slice, segment) per frame, in highdicom's order
        per_frame: list[Dataset] = []
        positions_of = {k: _plane_position(source_images[k]) for k in ordered}
        derivations = {k: _derivation(source_images[k]) for k in ordered}
        for segment_index, number in enumerate(numbers):
            for rank, k in enumerate(ordered, start=1):
                if omit and not present[k, segment_index]:
                    continue
                item = _per_frame_item([segment_index + 1, rank], positions_of[k], derivations[k])
                if len(numbers) > 1:
                    item.add(DataElement(_SEGMENT_IDENTIFICATION_SEQUENCE, "SQ", [_segment_identification(number)]))
                per_frame.append(item)
                frames.append((k, number))
        self.PerFrameFunctionalGroupsSequence = per_frame
        self.NumberOfFrames = len(frames)
        pixels = _packed_frames(labels, frames)
        if len(pixels) % 2:
            pixels += b"0"  # highdicom pads with the character, not a null byte
        self.PixelData = pixels


def _check_inputs(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    voxels_per_slice: np.ndarray,
    descriptions: Sequence[hd.seg.SegmentDescription],
) -> list[int]:
    """The segment numbers; ValueError naming the first thing outside the case this writes."""
    if not sources:
        raise ValueError("a segmentation needs source images")
    if labels.ndim != 3 or labels.dtype not in _LABEL_DTYPES:
        raise ValueError(f"the mask must be a (slices, rows, columns) bool/uint8/uint16 array, got {labels.dtype}")
    if labels.shape[0] != len(sources):
        raise ValueError(f"the mask has {labels.shape[0]} slices for {len(sources)} source images")
    if voxels_per_slice.ndim != 2 or voxels_per_slice.shape[0] != labels.shape[0] or voxels_per_slice.shape[1] < 1:
        raise ValueError(f"voxel counts of shape {voxels_per_slice.shape} for a mask of shape {labels.shape}")
    numbers = [int(item.SegmentNumber) for item in descriptions]
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"segment descriptions must be numbered 1..n in order, got {numbers}")
    if voxels_per_slice.shape[1] - 1 > len(numbers) and voxels_per_slice[:, len(numbers) + 1 :].any():
        raise ValueError(f"the mask holds labels above the {len(numbers)} described segment(s)")
    first = sources[0]
    if "FrameOfReferenceUID" not in first or "ImagePositionPatient" not in first:
        raise ValueError("the source images have no patient frame of reference (Frame of Reference UID, position)")
    if "ImageOrientationSlide" in first or "ImageCenterPointCoordinatesSequence" in first:
        raise ValueError("the source images are slide microscopy images, not slices of a patient")
    if "SliceThickness" not in first:  # Type 2: highdicom accepts it empty, and refuses it absent
        raise ValueError("the first source image has no Slice Thickness")
    for name in ("PixelSpacing", "ImageOrientationPatient"):
        if first.get(name) is None:
            raise ValueError(f"the first source image has no {name}")
    shared = (first.StudyInstanceUID, first.SeriesInstanceUID, first.FrameOfReferenceUID, first.ImageOrientationPatient)
    for ds in sources:
        if "NumberOfFrames" in ds:
            raise ValueError(f"source {ds.SOPInstanceUID} is a multi-frame image: only single-frame slices are written")
        if (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.get("FrameOfReferenceUID")) != shared[:3]:
            raise ValueError(f"source {ds.SOPInstanceUID} is not of the first source's series and frame of reference")
        if (ds.Rows, ds.Columns) != labels.shape[1:]:
            raise ValueError(
                f"source {ds.SOPInstanceUID} has {ds.Rows}x{ds.Columns} pixels, the mask {labels.shape[1:]}"
            )
        if ds.get("ImageOrientationPatient") != shared[3]:
            raise ValueError(f"source {ds.SOPInstanceUID} is oriented differently from the first source")
        if "ImagePositionPatient" not in ds:
            raise ValueError(f"source {ds.SOPInstanceUID} has no Image Position (Patient)")
    if not _CODE_STRING.fullmatch(str(first.Modality)):
        raise ValueError(f"modality {first.Modality!r} cannot make a Content Label")
    return numbers


def _presence(voxels_per_slice: np.ndarray, slices: int, numbers: Sequence[int]) -> np.ndarray:
    """(slices, segments) whether segment numbers[i] has a voxel on slice k."""
    present = np.zeros((slices, len(numbers)), dtype=bool)
    counted = min(len(numbers), voxels_per_slice.shape[1] - 1)
    present[:, :counted] = voxels_per_slice[:, 1 : counted + 1] > 0
    return present


def _slice_order(positions: np.ndarray, orientation: Sequence[float]) -> np.ndarray:
    """Slice indices along the normal of the slices, as highdicom sorts its planes; ValueError on a repeat."""
    normal = hd.spatial.get_normal_vector(orientation, index_convention=hd.spatial.VOLUME_INDEX_CONVENTION)
    distances = (normal[None] @ positions.T).squeeze(0)  # highdicom's product, for the same rounding
    _, order = np.unique(distances, return_index=True)
    if len(order) != len(positions):
        raise ValueError("two source slices lie at the same position along their normal")
    return np.asarray(order)


def _dimension_index(pointer: int, group: int, organization: str, label: str) -> Dataset:
    item = Dataset()
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = group
    item.DimensionOrganizationUID = organization
    item.DimensionDescriptionLabel = label
    return item


def _references(sources: Sequence[Dataset]) -> tuple[list[Dataset], list[Dataset]]:
    """Source Image Sequence items, one per source, and the Referenced Series Sequence item of their series
    (the same items, as highdicom shares them)."""
    images = []
    for ds in sources:
        reference = Dataset()
        reference.add(DataElement(_REFERENCED_SOP_CLASS_UID, "UI", ds.SOPClassUID))
        reference.add(DataElement(_REFERENCED_SOP_INSTANCE_UID, "UI", ds.SOPInstanceUID))
        images.append(reference)
    series = Dataset()
    series.SeriesInstanceUID = sources[0].SeriesInstanceUID
    series.ReferencedInstanceSequence = images
    return images, [series]


def _segment_identification(number: int) -> Dataset:
    item = Dataset()
    item.add(DataElement(_REFERENCED_SEGMENT_NUMBER, "US", number))
    return item


def _plane_position(source: Dataset) -> list[Dataset]:
    item = Dataset()
    position = [DS(value, auto_format=True) for value in source.ImagePositionPatient]
    item.add(DataElement(_IMAGE_POSITION_PATIENT, "DS", position))
    return [item]


def _derivation(source: Dataset) -> Dataset:
    """The Derivation Image item of the frames drawn on ``source``."""
    reference = Dataset()
    reference.add(DataElement(_REFERENCED_SOP_CLASS_UID, "UI", source.SOPClassUID))
    reference.add(DataElement(_REFERENCED_SOP_INSTANCE_UID, "UI", source.SOPInstanceUID))
    reference.add(DataElement(_PURPOSE_OF_REFERENCE_CODE_SEQUENCE, "SQ", [_PURPOSE]))
    reference.add(DataElement(_SPATIAL_LOCATIONS_PRESERVED, "CS", "YES"))
    item = Dataset()
    item.add(DataElement(_DERIVATION_CODE_SEQUENCE, "SQ", [_DERIVATION]))
    item.add(DataElement(_SOURCE_IMAGE_SEQUENCE, "SQ", [reference]))
    return item


def _per_frame_item(index_values: list[int], position: list[Dataset], derivation: Dataset) -> Dataset:
    content = Dataset()
    content.add(DataElement(_DIMENSION_INDEX_VALUES, "UL", index_values))
    item = Dataset()
    item.add(DataElement(_FRAME_CONTENT_SEQUENCE, "SQ", [content]))
    item.add(DataElement(_PLANE_POSITION_SEQUENCE, "SQ", position))
    item.add(DataElement(_DERIVATION_IMAGE_SEQUENCE, "SQ", [derivation]))
    return item


def _packed_frames(labels: np.ndarray, frames: Sequence[tuple[int, int]]) -> bytes:
    """The frames' bits, least significant first, run on from frame to frame without padding (as highdicom
    packs them) and the last byte padded with zeros."""
    pixels = labels.shape[1] * labels.shape[2]
    if pixels < 8 or pixels % 8 == 0:
        # frames filling whole bytes can be packed one by one, sparing a copy of every frame's bits; highdicom
        # packs frames of fewer than 8 pixels one by one too, each padded to a byte
        return b"".join(np.packbits(labels[k] == n, bitorder="little").tobytes() for k, n in frames)
    bits = np.concatenate([(labels[k] == n).reshape(-1) for k, n in frames]) if frames else np.zeros(0, dtype=bool)
    return bytes(np.packbits(bits, bitorder="little").tobytes())
