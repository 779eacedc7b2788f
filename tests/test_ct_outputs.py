"""SEG, SR (TID 1411 per gland) and key-image SC of a CT mask, through infer.run_network: valid and linked."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from scintnode.finding import Finding, Region, VolumeMask
from scintnode.infer import run_network
from scintnode.models.ct_unet import model_spec
from scintnode.models.spec import ModelSpec
from scintnode.phantoms.ct import Contrast, build_ct_series
from scintnode.phantoms.nm import Patient, StudyInfo
from scintnode.write.seg import build_segmentation
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean, assert_dsrdump_parses

SHAPE = (6, 24, 24)


class FixedMask:
    """A stand-in network that returns a known two-gland mask on the unenhanced series (no torch needed)."""

    spec: ModelSpec = model_spec("0" * 64)

    def run(self, sources: list[Dataset]) -> Finding:
        raise ValueError("episode only")

    def run_episode(self, slots: list[str], sources: list[Dataset]) -> Finding:
        native = [ds for slot, ds in zip(slots, sources, strict=True) if slot == "unenhanced"]
        labels = np.zeros(SHAPE, dtype=np.uint8)
        labels[2:5, 10:14, 4:8] = 1
        labels[1, 10:12, 17:19] = 2
        regions = (
            Region(1, "Parathyroid gland candidate 1", 48.0, (-6.0, -2.0, 3.0), "right", 0.91),
            Region(2, "Parathyroid gland candidate 2", 4.0, (7.5, -2.5, 3.0), "left", 0.62),
        )
        return Finding(
            model=self.spec,
            predicted="glands",
            probabilities={"glands": 0.91, "none": 0.09},
            hotspots=(),
            volume=VolumeMask(
                labels, tuple(str(ds.SOPInstanceUID) for ds in native), str(native[0].SeriesInstanceUID), regions
            ),
        )


@pytest.fixture(scope="module")
def phases() -> tuple[list[Dataset], list[Dataset]]:
    patient = Patient("SYNSEG", "SYNTHETIC^SEG", dt.date(1960, 1, 1), "F")
    study = StudyInfo(generate_uid(), dt.datetime(2026, 2, 2, 9, 0), accession="SYNSEG1", description="(synthetic)")
    frame = generate_uid()
    built = []
    for number, contrast in ((2, None), (3, Contrast(start=dt.datetime(2026, 2, 2, 9, 3)))):
        built.append(
            build_ct_series(
                np.random.default_rng(number).normal(40, 10, SHAPE),
                patient=patient,
                study=study,
                series_uid=generate_uid(),
                series_number=number,
                series_description="NECK (synthetic)",
                acquired=dt.datetime(2026, 2, 2, 9, 2 + 2 * number),
                frame_of_reference_uid=frame,
                contrast=contrast,
            )
        )
    return built[0], built[1]


def test_seg_sr_and_key_image_are_valid_and_reference_each_other(phases: tuple[list[Dataset], list[Dataset]]) -> None:
    native, enhanced = phases
    slots = ["unenhanced"] * len(native) + ["enhanced"] * len(enhanced)
    result = run_network(FixedMask(), [*native, *enhanced], ["seg", "sr", "sc"], slots=slots)  # type: ignore[arg-type]
    kinds = [out.kind for out in result.outputs]
    assert kinds == ["seg", "sr", "sc"]
    assert 0 < result.writing_ms <= result.total_ms  # building and encoding are timed, inside the job
    seg, sr, sc = (out.dataset for out in result.outputs)

    assert_dciodvfy_clean(seg)
    assert seg.SegmentationType == "BINARY" and seg.FrameOfReferenceUID == native[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == native[0].SeriesInstanceUID
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == ["111002", "111002"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.StudyInstanceUID == native[0].StudyInstanceUID

    assert_dciodvfy_clean(sr)
    dump = assert_dsrdump_parses(sr)
    assert dump.count("TID 1411") == 2 and "Source Series for Segmentation" in dump
    assert '(24028007,SCT,"Right")' in dump and '(7771000,SCT,"Left")' in dump
    assert '"Volume")="48' in dump and '"Probability")="91' in dump
    seg_tracking = {str(s.TrackingUID) for s in seg.SegmentSequence}
    assert seg_tracking <= set(_uidrefs(sr))  # SR groups reuse the segments' Tracking UIDs
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    assert {str(ds.SOPInstanceUID) for ds in [*native, *enhanced]} <= evidence  # every input stays evidence
    # image by image, the SR names the key slice of each gland, not every slice of both series
    images = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in _items(sr) if item.ValueType == "IMAGE"
    }
    assert images == {native[3].SOPInstanceUID, native[1].SOPInstanceUID, seg.SOPInstanceUID}  # + TID 1411's segment
    segmented = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert segmented == {str(ds.SOPInstanceUID) for ds in native}

    assert_dciodvfy_clean(sc, allowed_errors=[LATERALITY_2C_LIMITATION])
    assert sc.BurnedInAnnotation == "YES"
    key_slice = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert (
        key_slice == native[3].SOPInstanceUID
    )  # the slice with the most of gland 1 (slices 2-4; the middle one first)


def test_no_region_means_no_seg_and_a_clear_error_when_asked_directly(
    phases: tuple[list[Dataset], list[Dataset]],
) -> None:
    native, _ = phases
    empty = Finding(
        model=FixedMask.spec,
        predicted="none",
        probabilities={"glands": 0.1, "none": 0.9},
        hotspots=(),
        volume=VolumeMask(np.zeros(SHAPE, np.uint8), tuple(str(ds.SOPInstanceUID) for ds in native), "1.2.3", ()),
    )
    with pytest.raises(ValueError, match="found no region"):
        build_segmentation(empty, native)


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of an SR, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found.extend(_items(item))
    return found


def _uidrefs(ds: Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "UIDREF":
            found.append(str(item.UID))
        found.extend(_uidrefs(item))
    return found


@pytest.mark.parametrize("seed", range(4))
def test_each_regions_key_slice_is_the_middle_of_its_voxels(seed: int) -> None:
    labels = np.random.default_rng(seed).choice(4, size=(12, 9, 7), p=[0.9, 0.06, 0.03, 0.01]).astype(np.uint8)
    if seed == 0:
        labels[labels == 3] = 0  # a region without voxels
    volume = VolumeMask(labels, tuple(str(k) for k in range(12)), "1.2.3", ())
    for number in (1, 2, 3):
        per_slice = (labels == number).sum(axis=(1, 2))  # the oracle: every slice counted on its own
        if not per_slice.any():
            with pytest.raises(ValueError, match=f"region {number} has no voxel"):
                volume.centre_slice(number)
            continue
        assert volume.centre_slice(number) == round(float(np.average(np.arange(12), weights=per_slice)))
    with pytest.raises(ValueError, match="region 9 has no voxel"):
        volume.centre_slice(9)


@pytest.mark.parametrize("seed", range(6))
def test_voxels_per_slice_counts_every_label_on_every_slice(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=(15, 8, 6), p=[0.94, 0.03, 0.01, 0.01, 0.01]).astype(np.uint8)
    labels[rng.choice(15, size=6, replace=False)] = 0  # empty slices among occupied ones
    if seed == 1:
        labels[:] = 0
    volume = VolumeMask(labels, tuple(str(k) for k in range(15)), "1.2.3", ())
    counts = volume.voxels_per_slice
    width = int(labels.max()) + 1
    assert counts.shape == (15, width)
    oracle = np.array([[(labels[k] == n).sum() if n else 0 for n in range(width)] for k in range(15)])
    np.testing.assert_array_equal(counts, oracle)


def test_voxels_per_slice_of_masks_without_voxels() -> None:
    assert VolumeMask(np.zeros((0, 4, 4), np.uint8), (), "1.2.3", ()).voxels_per_slice.shape == (0, 1)
    np.testing.assert_array_equal(
        VolumeMask(np.zeros((3, 0, 0), np.uint8), ("a", "b", "c"), "1.2.3", ()).voxels_per_slice, np.zeros((3, 1))
    )
