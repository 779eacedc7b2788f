"""The SEG scintnode writes (write/seg_document.py) equals what highdicom's Segmentation constructor makes of the
same mask and sources (tests/seg_reference.py), element by element and byte by byte, on the demo CT and on
hand-built series and masks; its frames decode to the mask; sources it does not handle are refused.

Only what is generated anew for each SEG is made equal before comparing: the segments' Tracking UIDs, the
moments it was made (Instance Creation and Content Date and Time, highdicom's Contribution DateTime) and the
Dimension Organization UID."""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from scintnode.finding import Finding, Region, VolumeMask
from scintnode.models.ct_unet import model_spec
from scintnode.phantoms import ct_parathyroid
from scintnode.phantoms.ct import build_ct_series
from scintnode.phantoms.nm import Patient, StudyInfo
from scintnode.write.part10 import encode_file
from scintnode.write.seg import build_segmentation, segment_descriptions
from scintnode.write.seg_document import BinarySegmentation
from scintnode.write.sr import contributing_equipment
from tests import seg_reference
from tests.dicom_validation import assert_dciodvfy_clean

_MOMENTS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _equalised(ours: Dataset, library: Dataset) -> Dataset:
    """``library`` with the values generated anew for each SEG (see the module docstring) taken from ``ours``."""
    for mine, theirs in zip(ours.SegmentSequence, library.SegmentSequence, strict=True):
        theirs.TrackingUID = mine.TrackingUID
    for keyword in _MOMENTS:
        library[keyword].value = ours[keyword].value
    for mine, theirs in zip(ours.ContributingEquipmentSequence, library.ContributingEquipmentSequence, strict=True):
        if "ContributionDateTime" in mine:
            theirs.ContributionDateTime = mine.ContributionDateTime
    organization = ours.DimensionOrganizationSequence[0].DimensionOrganizationUID
    library.DimensionOrganizationSequence[0].DimensionOrganizationUID = organization
    for item in library.DimensionIndexSequence:
        item.DimensionOrganizationUID = organization
    return library


def _elements(ds: Dataset, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """(place, tag, VR, value as written) of every element, depth first."""
    for element in ds:
        if element.VR == "SQ":
            yield path, element.tag, "SQ", len(element.value)
            for index, item in enumerate(element.value):
                yield from _elements(item, (*path, element.tag, index))
        elif isinstance(element.value, bytes):
            yield path, element.tag, element.VR, element.value
        elif isinstance(element.value, list | tuple) or type(element.value).__name__ == "MultiValue":
            yield path, element.tag, element.VR, tuple(str(value) for value in element.value)
        else:
            yield path, element.tag, element.VR, str(element.value)


def assert_same_as_highdicoms(finding: Finding, sources: Sequence[Dataset]) -> Dataset:
    """Builds the SEG both ways with the same UIDs, asserts them equal and returns ours."""
    series, instance = generate_uid(), generate_uid()
    ours = build_segmentation(finding, sources, series_uid=series, sop_instance_uid=instance)
    library = _equalised(
        ours, seg_reference.build_segmentation(finding, sources, series_uid=series, sop_instance_uid=instance)
    )
    assert list(_elements(ours.file_meta)) == list(_elements(library.file_meta))
    assert list(_elements(ours)) == list(_elements(library))
    ours_file, library_file = encode_file(ours), encode_file(library)
    assert ours_file == library_file
    written, reference = dcmread(BytesIO(ours_file)), dcmread(BytesIO(library_file))
    assert written.to_json_dict() == reference.to_json_dict()
    return ours


def _finding(labels: np.ndarray, sources: Sequence[Dataset], regions: int | None = None) -> Finding:
    count = int(labels.max()) if regions is None else regions
    return Finding(
        model=model_spec("0" * 64),
        predicted="glands",
        probabilities={"glands": 0.9, "none": 0.1},
        hotspots=(),
        volume=VolumeMask(
            labels,
            tuple(str(ds.SOPInstanceUID) for ds in sources),
            str(sources[0].SeriesInstanceUID),
            tuple(
                Region(n, f"Parathyroid gland candidate {n}", 10.0 * n, (0.0, 0.0, 0.0), "left", 0.5 + n / 20)
                for n in range(1, count + 1)
            ),
        ),
    )


def _series(
    shape: tuple[int, int, int],
    *,
    spacing_mm: tuple[float, float, float] = (2.5, 0.8, 0.8),
    descending: bool = False,
    tilt_degrees: float = 0.0,
    gaps_after: Sequence[int] = (),
) -> list[Dataset]:
    """Single-frame CT slices of ``shape``, stacked along their normal (reversed: from the top down), the columns
    tilted about the x axis by ``tilt_degrees`` as by a gantry, an extra slice's gap after each of ``gaps_after``."""
    patient = Patient("SYNSEGW", "SYNTHETIC^SEGWRITE", dt.date(1961, 2, 3), "M")
    study = StudyInfo(generate_uid(), dt.datetime(2026, 4, 4, 9, 0), accession="SYNSEGW1", description="(synthetic)")
    slices = build_ct_series(
        np.zeros(shape),
        patient=patient,
        study=study,
        series_uid=generate_uid(),
        series_number=2,
        series_description="NECK (synthetic)",
        acquired=dt.datetime(2026, 4, 4, 9, 2),
        frame_of_reference_uid=generate_uid(),
        spacing_mm=spacing_mm,
        origin_mm=(-100.25, -90.125, -80.3),
    )
    tilt = math.radians(tilt_degrees)
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(tilt), math.sin(tilt)])
    normal = np.cross(row, column)
    origin = np.array([-100.25, -90.125, -80.3])
    offsets = np.arange(shape[0], dtype=np.float64)
    for after in gaps_after:
        offsets[after + 1 :] += 1.0
    if descending:
        offsets = offsets[-1] - offsets
    for ds, offset in zip(slices, offsets, strict=True):
        position = origin + offset * spacing_mm[0] * normal
        ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in (*row, *column)]
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
        ds.SliceLocation = format_number_as_ds(float(position[2]))
    return slices


def _several_regions(shape: tuple[int, int, int]) -> np.ndarray:
    """Three regions on slices 1-3, 6 (region 3 alone) and 8, slices 0, 4, 5 and 7 empty."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:4, 2:6, 3:7] = 1
    labels[2, 7:9, 1:3] = 2
    labels[8, 5:7, 6:9] = 2
    labels[6, 1, 1] = 3
    labels[3, 9, 9] = 3
    return labels


@pytest.fixture(scope="module")
def demo() -> tuple[Finding, list[Dataset]]:
    """The demo CT phantom (a small one) and the parathyroid network's finding on it."""
    from scintnode.models.registry import default_registry

    phantom = ct_parathyroid.synthesize(np.random.default_rng(3), (40, 96, 96), (2, 1, 1))
    with tempfile.TemporaryDirectory() as folder:
        entry: dict[str, Any] = ct_parathyroid.write_phantom(
            phantom, Path(folder) / "P", "SYNSEG", dt.datetime(2026, 1, 5, 9)
        )
        native = [dcmread(Path(folder) / name) for name in entry["unenhanced"]["files"]]
        enhanced = [dcmread(Path(folder) / name) for name in entry["enhanced"]["files"]]
    network = default_registry().get("ct-parathyroid-unet")
    finding = network.run_episode(["unenhanced"] * len(native) + ["enhanced"] * len(enhanced), native + enhanced)
    return finding, native + enhanced


def test_the_demo_cts_segmentation_equals_highdicoms(demo: tuple[Finding, list[Dataset]]) -> None:
    finding, sources = demo
    assert finding.volume is not None and len(finding.volume.regions) >= 2
    seg = assert_same_as_highdicoms(finding, sources)
    assert int(seg.NumberOfFrames) == int(np.count_nonzero(finding.volume.voxels_per_slice[:, 1:]))
    # the network is named in Contributing Equipment, as in the SR and the SC (IHE AIR), between camera and library
    _camera, ours, library = seg.ContributingEquipmentSequence
    assert ours == contributing_equipment(finding.model)
    assert library.ManufacturerModelName == "highdicom"


_CASES: dict[str, Callable[[], tuple[np.ndarray, list[Dataset]]]] = {
    "several regions, empty slices between": lambda: (_several_regions((10, 12, 12)), _series((10, 12, 12))),
    "descending z": lambda: (_several_regions((10, 12, 12)), _series((10, 12, 12), descending=True)),
    "oblique": lambda: (_several_regions((10, 12, 12)), _series((10, 12, 12), tilt_degrees=17.0)),
    "oblique, descending": lambda: (
        _several_regions((10, 12, 12)),
        _series((10, 12, 12), tilt_degrees=-23.5, descending=True),
    ),
    "non-square pixels, frames not whole bytes": lambda: (
        _several_regions((10, 14, 11)),  # 7 frames of 154 pixels: 135 bytes, and highdicom's padding
        _series((10, 14, 11), spacing_mm=(1.25, 0.7, 0.45)),
    ),
    "slices unevenly spaced": lambda: (_several_regions((10, 12, 12)), _series((10, 12, 12), gaps_after=(3,))),
    "one region on every slice (3D)": lambda: (
        np.pad(np.ones((6, 3, 3), np.uint8), ((0, 0), (4, 5), (2, 7))),
        _series((6, 12, 12), tilt_degrees=9.0),
    ),
    "one region, descending (3D)": lambda: (
        np.pad(np.ones((6, 3, 3), np.uint8), ((0, 0), (4, 5), (2, 7))),
        _series((6, 12, 12), descending=True),
    ),
    "one region with a gap": lambda: (
        np.pad(np.ones((6, 3, 3), np.uint8), ((0, 0), (4, 5), (2, 7)))
        * np.array([1, 1, 0, 1, 1, 0], np.uint8)[:, None, None],
        _series((6, 12, 12)),
    ),
    "one region on one slice": lambda: (
        np.pad(np.ones((1, 2, 2), np.uint8), ((4, 5), (3, 7), (3, 7))),
        _series((10, 12, 12)),
    ),
    "a bool mask": lambda: (_several_regions((10, 12, 12)) == 1, _series((10, 12, 12))),
    "frames of 6 pixels": lambda: (_several_regions((10, 12, 12))[:, 2:4, 3:6], _series((10, 2, 3))),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_a_hand_built_mask_gives_highdicoms_segmentation(case: str) -> None:
    labels, sources = _CASES[case]()
    assert_same_as_highdicoms(_finding(labels, sources), sources)


def test_regions_without_voxels_keep_every_frame_as_highdicom_does() -> None:
    sources = _series((4, 8, 8))
    seg = assert_same_as_highdicoms(_finding(np.zeros((4, 8, 8), np.uint8), sources, regions=2), sources)
    assert seg.NumberOfFrames == 8


def test_source_attributes_are_carried_over_as_highdicom_does() -> None:
    sources = _series((10, 12, 12))
    for ds in sources:
        ds.SpacingBetweenSlices = "2.5000"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [8.5]
        ds.LossyImageCompressionMethod = ["ISO_10918_1"]
        ds.SliceThickness = None  # Type 2: present and empty
        # numbers written otherwise than highdicom writes them: it keeps valid ones, rewrites overlong ones
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the overlong values, as it reads them from a file
            ds.ImagePositionPatient = [f"{float(value):.13f}" for value in ds.ImagePositionPatient]
        ds.ImageOrientationPatient = ["1.000", "0", "0", "0", "1.00", "0.0"]
        ds.PixelSpacing = ["0.800", "0.8000"]
        del ds.PositionReferenceIndicator
    seg = assert_same_as_highdicoms(_finding(_several_regions((10, 12, 12)), sources), sources)
    assert seg.LossyImageCompression == "01"


def test_the_frames_decode_to_the_mask() -> None:
    labels = _several_regions((10, 13, 11))
    sources = _series((10, 13, 11), tilt_degrees=17.0, descending=True)
    finding = _finding(labels, sources)
    seg = dcmread(BytesIO(encode_file(build_segmentation(finding, sources))))
    assert_dciodvfy_clean(seg)
    frames = seg.pixel_array
    slice_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        k = slice_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(frame, labels[k] == number)
        seen.add((k, number))
    assert seen == {(k, n) for k in range(10) for n in (1, 2, 3) if (labels[k] == n).any()}


def _refusal(
    change: Callable[[np.ndarray, list[Dataset]], tuple[np.ndarray, list[Dataset]]],
) -> tuple[Finding, list[Dataset]]:
    labels, sources = change(_several_regions((10, 12, 12)), _series((10, 12, 12)))
    return _finding(labels, sources, regions=3), sources


def _edit(
    index: int, keyword: str, value: Any
) -> Callable[[np.ndarray, list[Dataset]], tuple[np.ndarray, list[Dataset]]]:
    def change(labels: np.ndarray, sources: list[Dataset]) -> tuple[np.ndarray, list[Dataset]]:
        if value is None:
            delattr(sources[index], keyword)
        else:
            setattr(sources[index], keyword, value)
        return labels, sources

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_edit(0, "NumberOfFrames", 1), "multi-frame"),
        (_edit(4, "ImageOrientationPatient", [1, 0, 0, 0, 0.8, 0.6]), "oriented differently"),
        (_edit(4, "SeriesInstanceUID", generate_uid()), "series and frame of reference"),
        (_edit(4, "FrameOfReferenceUID", generate_uid()), "series and frame of reference"),
        (_edit(0, "FrameOfReferenceUID", None), "no patient frame of reference"),
        (_edit(4, "ImagePositionPatient", None), "no Image Position"),
        (_edit(0, "SliceThickness", None), "no Slice Thickness"),
        (_edit(5, "ImagePositionPatient", ["-100.25", "-90.125", "-80.3"]), "same position"),
        (lambda labels, sources: (labels[:, :, :10], sources), "12x12 pixels"),
        (lambda labels, sources: (np.where(labels == 3, 4, labels).astype(np.uint8), sources), "above the 3 described"),
    ],
)
def test_sources_outside_what_it_writes_are_refused(
    change: Callable[[np.ndarray, list[Dataset]], tuple[np.ndarray, list[Dataset]]], message: str
) -> None:
    finding, sources = _refusal(change)
    with pytest.raises(ValueError, match=message):
        build_segmentation(finding, sources)


def test_highdicom_refuses_a_source_without_slice_thickness_too() -> None:
    finding, sources = _refusal(_edit(0, "SliceThickness", None))
    with pytest.raises(AttributeError, match="SliceThickness"):
        seg_reference.build_segmentation(finding, sources)


def test_segments_must_be_described_in_order() -> None:
    labels, sources = _several_regions((10, 12, 12)), _series((10, 12, 12))
    finding = _finding(labels, sources)
    assert finding.volume is not None
    descriptions = segment_descriptions(finding)
    with pytest.raises(ValueError, match=r"numbered 1..n in order, got \[2, 1, 3\]"):
        BinarySegmentation(
            sources,
            labels,
            finding.volume.voxels_per_slice,
            [descriptions[1], descriptions[0], descriptions[2]],
            series_instance_uid=generate_uid(),
            series_number=9003,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="scintnode",
            manufacturer_model_name="test",
            software_versions="1",
            device_serial_number="none",
            series_description="x",
        )
    assert isinstance(descriptions[0], hd.seg.SegmentDescription)
