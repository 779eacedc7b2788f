"""CT series to volumes (scintnode/models/ct_volume.py): slice order, rescale, tilt, uneven spacing, resampling."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.pixels import pixel_array
from pydicom.uid import RLELossless, generate_uid

from scintnode.models import ct_slices, ct_volume
from scintnode.models.ct_slices import VolumeNotUsable, slice_hounsfield, stored_values
from scintnode.models.ct_volume import (
    CTVolume,
    Grid,
    assemble_volume,
    grid_to_slices,
    resample_to_grid,
    sample_array,
    sample_separable,
)
from scintnode.phantoms.ct import build_ct_series
from scintnode.phantoms.nm import Patient, StudyInfo

PATIENT = Patient("SYNVOL", "SYNTHETIC^VOLUME", dt.date(1970, 1, 1), "M")
STUDY = StudyInfo(generate_uid(), dt.datetime(2026, 2, 1, 9, 0), accession="SYNV1", description="(synthetic)")


def series(
    hu: np.ndarray, spacing: tuple[float, float, float] = (2.0, 1.0, 1.0), origin=(-10.0, -20.0, 30.0)
) -> list[Dataset]:
    datasets = build_ct_series(
        hu,
        patient=PATIENT,
        study=STUDY,
        series_uid=generate_uid(),
        series_number=2,
        series_description="NECK NATIVE (synthetic)",
        acquired=STUDY.start,
        frame_of_reference_uid="1.2.3.4",
        spacing_mm=spacing,
        origin_mm=origin,
    )
    return [_round_trip(ds) for ds in datasets]


def _round_trip(ds: Dataset) -> Dataset:
    """As the node reads it from its spool: written and parsed again."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def ramp(shape: tuple[int, int, int]) -> np.ndarray:
    k, r, c = np.indices(shape, dtype=np.float64)
    return (10.0 * k + 2.0 * r + c).astype(np.float32)


def test_shuffled_slices_are_put_in_patient_order_with_rescale_applied() -> None:
    hu = ramp((6, 8, 10))
    slices = series(hu)
    shuffled = slices[:]
    random.Random(3).shuffle(shuffled)
    volume = assemble_volume(shuffled)
    np.testing.assert_allclose(volume.hounsfield(), hu, atol=0.5)  # stored values are HU + 1024, intercept -1024
    assert volume.sop_instance_uids == tuple(str(ds.SOPInstanceUID) for ds in slices)
    np.testing.assert_allclose(volume.slice_offsets, 30.0 + 2.0 * np.arange(6))


def test_rescale_slope_is_applied() -> None:
    slices = series(np.full((2, 4, 4), 100.0))
    for ds in slices:
        ds.RescaleSlope, ds.RescaleIntercept = 2, -2048
    assert float(assemble_volume(slices).hounsfield().mean()) == pytest.approx(2 * (100 + 1024) - 2048)


def test_assembling_leaves_no_decoded_pixels_cached_on_the_data_sets() -> None:
    # the job keeps its data sets until the results are written; pydicom's cache (`_pixel_array`) would hold
    # a second copy of every slice
    slices = series(ramp((3, 8, 8)))
    assemble_volume(slices)
    assert all(ds._pixel_array is None for ds in slices)
    assert slice_hounsfield(slices[1])[2, 3] == pytest.approx(ramp((3, 8, 8))[1, 2, 3], abs=0.5)
    assert slices[1]._pixel_array is None


def test_a_volume_keeps_uncompressed_slices_as_views_on_their_pixel_data() -> None:
    # a clinical phase as float32 HU is 200 MB of fresh memory; the stored values are already in memory
    slices = series(ramp((4, 8, 8)))
    volume = assemble_volume(slices)
    for ds, stored in zip(sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2])), volume.stored, strict=True):
        assert np.shares_memory(stored, np.frombuffer(ds.PixelData, dtype=np.uint8))
    np.testing.assert_array_equal(volume.hounsfield_slice(2), volume.hounsfield()[2])


def _slice(values: list[int], bits_stored: int, signed: int) -> Dataset:
    ds = series(np.zeros((1, 2, 2)))[0]
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
    ds.PixelData = np.array(values, dtype="<i2" if signed else "<u2").tobytes()
    return ds


@pytest.mark.parametrize(
    ("values", "bits_stored", "signed", "viewed"),
    [
        ([0, 1, 2048, 4095], 12, 0, True),
        ([0, 1, -2048, 2047], 12, 1, True),
        ([-32768, -1, 0, 32767], 16, 1, True),
        ([0, 1, 40000, 65535], 16, 0, True),
        ([0, 0x1000, 0xF123, 7], 12, 0, False),  # unused high bits set: pydicom masks them
        ([0, 2048, -2049, 1], 12, 1, False),  # outside 12 signed bits: pydicom sign-extends bit 11
    ],
)
def test_stored_values_equal_pydicoms_decoding(
    values: list[int], bits_stored: int, signed: int, viewed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _slice(values, bits_stored, signed)
    expected = pixel_array(ds)
    decoded: list[Dataset] = []
    monkeypatch.setattr(ct_slices, "pixel_array", lambda ds: decoded.append(ds) or pixel_array(ds))
    np.testing.assert_array_equal(stored_values(ds), expected)
    assert decoded == ([] if viewed else [ds]), "in range, the values are read from Pixel Data as they are"


def test_compressed_slices_are_decoded_by_pydicom() -> None:
    slices = series(ramp((2, 8, 8)))
    expected = [pixel_array(ds) for ds in slices]
    for ds in slices:
        ds.compress(RLELossless)
    volume = assemble_volume(slices)
    np.testing.assert_array_equal(np.stack(volume.stored), np.stack(expected))
    np.testing.assert_allclose(volume.hounsfield(), ramp((2, 8, 8)), atol=0.5)


def test_separable_sampling_asks_for_each_source_slice_once_in_turn() -> None:
    rng = np.random.default_rng(8)
    values = rng.random((9, 6, 5), dtype=np.float32)
    asked: list[int] = []

    def plane(index: int) -> np.ndarray:
        asked.append(index)
        return values[index]

    indices = [np.linspace(-0.4, 8.4, 23), np.linspace(0, 5, 6), np.linspace(0, 4, 5)]
    sampled = sample_separable(plane, values.shape, indices, -1.0)
    whole = sample_separable(values.__getitem__, values.shape, indices, -1.0)
    np.testing.assert_array_equal(sampled, whole)
    assert asked == sorted(set(asked)) == list(range(9)), "neighbouring output slices share their source slices"


def test_gantry_tilt_is_refused_with_a_clear_message() -> None:
    slices = series(ramp((5, 8, 8)))
    for index, ds in enumerate(slices):  # each slice shifted in y as a tilted gantry stacks them
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.7 * index, z]
    with pytest.raises(VolumeNotUsable, match="gantry tilt"):
        assemble_volume(slices)


def test_mixed_orientations_and_duplicates_are_refused() -> None:
    slices = series(ramp((3, 8, 8)))
    slices[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(VolumeNotUsable, match="different orientations"):
        assemble_volume(slices)
    slices = series(ramp((3, 8, 8)))
    with pytest.raises(VolumeNotUsable, match="share one position"):
        assemble_volume([*slices, slices[0]])
    with pytest.raises(VolumeNotUsable, match="one series"):
        assemble_volume([*series(ramp((2, 8, 8))), *series(ramp((2, 8, 8)))])


def test_slices_that_do_not_decode_to_one_grey_frame_are_refused() -> None:
    slices = series(ramp((3, 8, 8)))
    slices[1].PixelData = slices[1].PixelData[:10]  # cut short in transit
    with pytest.raises(VolumeNotUsable, match=f"cannot decode slice {slices[1].SOPInstanceUID}"):
        assemble_volume(slices)
    slices = series(ramp((3, 8, 8)))
    for ds in slices:  # each slice's bytes read as two frames of 4x8
        ds.NumberOfFrames, ds.Rows = 2, 4
    with pytest.raises(VolumeNotUsable, match="not a single grey frame"):
        assemble_volume(slices)


def test_uneven_spacing_is_interpolated_between_the_real_slice_positions() -> None:
    # a field linear in z (mm) sampled at uneven positions must come back linear on an even grid
    positions = [0.0, 1.0, 2.0, 4.0, 5.0, 8.0]
    hu = np.stack([np.full((6, 6), 10.0 * z, dtype=np.float32) for z in positions])
    slices = series(hu, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    for ds, z in zip(slices, positions, strict=True):
        ds.ImagePositionPatient = [0.0, 0.0, z]
    volume = assemble_volume(slices)
    grid = Grid.over(volume, 1.0)
    assert grid.shape == (9, 6, 6)
    on_grid = resample_to_grid(volume, grid)
    np.testing.assert_allclose(on_grid[:, 2, 2], 10.0 * np.arange(9), atol=1.0)


def test_a_second_phase_with_other_geometry_is_resampled_onto_the_first() -> None:
    # both phases show one linear field of patient position; the second has its own origin and spacing
    def field(
        shape: tuple[int, int, int], spacing: tuple[float, float, float], origin: tuple[float, float, float]
    ) -> np.ndarray:
        k, r, c = np.indices(shape, dtype=np.float64)
        x, y, z = origin[0] + c * spacing[2], origin[1] + r * spacing[1], origin[2] + k * spacing[0]
        return (2.0 * x + 3.0 * y + 5.0 * z).astype(np.float32)

    first = assemble_volume(series(field((8, 12, 12), (2.0, 1.0, 1.0), (0, 0, 0)), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    other_origin = (-3.0, -2.0, -4.0)
    second = assemble_volume(series(field((14, 20, 20), (1.5, 0.8, 0.8), other_origin), (1.5, 0.8, 0.8), other_origin))
    grid = Grid.over(first, 1.0)
    np.testing.assert_allclose(resample_to_grid(second, grid), resample_to_grid(first, grid), atol=1.0)
    # and a map on the grid goes back onto the first series' own slices
    back = grid_to_slices(resample_to_grid(first, grid), grid, first)
    np.testing.assert_allclose(back, first.hounsfield(), atol=1.0)


def test_a_grid_beyond_the_other_phase_is_filled_with_air() -> None:
    first = assemble_volume(series(np.full((4, 8, 8), 40.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    second = assemble_volume(series(np.full((4, 8, 8), 40.0), (1.0, 1.0, 1.0), (0.0, 0.0, 2.0)))
    sampled = resample_to_grid(second, Grid.over(first, 1.0))
    assert sampled[0].max() == pytest.approx(-1024.0) and sampled[3].min() == pytest.approx(40.0, abs=0.5)


def volume_on(
    hu: np.ndarray,
    origin: tuple[float, float, float],
    pixel_spacing: tuple[float, float],
    slice_offsets: list[float],
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0),
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0),
    drift_mm: float = 0.0,
) -> CTVolume:
    """A volume built directly: slices at `slice_offsets` along the normal, each shifted in-plane by
    index * drift_mm along the row direction (within the tilt tolerance)."""
    rows, columns = np.asarray(row_direction, dtype=np.float64), np.asarray(column_direction, dtype=np.float64)
    normal = np.cross(rows, columns)
    index = np.arange(len(slice_offsets), dtype=np.float64)[:, None]
    positions = np.asarray(origin) + np.asarray(slice_offsets)[:, None] * normal + index * drift_mm * rows
    uids = tuple(f"1.2.826.0.1.3680043.2.1125.{i}" for i in range(len(slice_offsets)))
    return CTVolume.from_hounsfield(hu, positions, rows, columns, pixel_spacing, uids, "1.2.826.0.1.3680043.2.1")


def resampled_point_by_point(volume: CTVolume, grid: Grid) -> np.ndarray:
    """The oracle: every grid point sampled with the general trilinear sampler."""
    points = np.concatenate([grid.points(k) for k in range(grid.shape[0])])
    return sample_array(volume.hounsfield(), volume.fractional_indices(points), grid.shape, -1024.0)


def returned_point_by_point(values: np.ndarray, grid: Grid, volume: CTVolume) -> np.ndarray:
    rows, columns = volume.shape[1:]
    r = np.arange(rows)[:, None, None] * volume.pixel_spacing[0] * volume.column_direction
    c = np.arange(columns)[None, :, None] * volume.pixel_spacing[1] * volume.row_direction
    points = np.concatenate([position + (r + c).reshape(-1, 3) for position in volume.positions])
    return sample_array(values, grid.indices(points), volume.shape, 0.0)


def test_resampling_axis_by_axis_equals_sampling_every_point() -> None:
    rng = np.random.default_rng(5)
    reference = volume_on(rng.normal(0, 300, (9, 14, 12)), (0.0, 0.0, 0.0), (1.0, 1.0), [0, 2, 4, 6, 8, 10, 12, 14, 16])
    grid = Grid.over(reference, 0.7)
    # another phase with its own origin, pixel spacing and uneven slices, reaching past the grid on some sides
    offsets = [0.0, 1.5, 2.5, 5.0, 6.0, 9.0, 11.0]
    other = volume_on(rng.normal(0, 300, (7, 20, 18)), (-3.3, -1.9, 1.1), (0.8, 0.9), offsets)
    for volume in (reference, other):
        expected = resampled_point_by_point(volume, grid)
        np.testing.assert_allclose(resample_to_grid(volume, grid), expected, atol=0.01)
    assert (expected == -1024.0).any() and (expected != -1024.0).any()
    for volume in (reference, other):  # a map on a grid over the phase, brought back onto its slices
        own_grid = Grid.over(volume, 0.7)
        probability = rng.random(own_grid.shape, dtype=np.float32)
        back = grid_to_slices(probability, own_grid, volume)
        np.testing.assert_allclose(back, returned_point_by_point(probability, own_grid, volume), atol=1e-5)


def test_drifting_slices_and_rotated_phases_are_sampled_point_by_point(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    offsets = [0.0, 2.0, 4.0, 6.0, 8.0]
    aligned = volume_on(rng.normal(0, 300, (5, 10, 10)), (0.0, 0.0, 0.0), (1.0, 1.0), offsets)
    grid = Grid.over(aligned, 1.0)
    probability = rng.random(grid.shape, dtype=np.float32)
    calls: list[int] = []
    general = ct_volume.sample_array

    def counted(*args: object) -> np.ndarray:
        calls.append(1)
        return general(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ct_volume, "sample_array", counted)
    resample_to_grid(aligned, grid)
    grid_to_slices(probability, grid, aligned)
    assert not calls, "a phase on the grid's own axes is sampled axis by axis"

    # slices drifting 0.03 mm each in-plane (under the tilt tolerance): each lands a little off the grid's rows
    drifting = volume_on(aligned.hounsfield(), (0.0, 0.0, 0.0), (1.0, 1.0), offsets, drift_mm=0.03)
    np.testing.assert_allclose(
        grid_to_slices(probability, grid, drifting), returned_point_by_point(probability, grid, drifting), atol=1e-5
    )
    # a phase scanned at 10 degrees about the patient's z axis
    turn = np.deg2rad(10.0)
    rotated = volume_on(
        aligned.hounsfield(),
        (-2.0, 1.0, 0.5),
        (1.0, 1.0),
        offsets,
        (np.cos(turn), np.sin(turn), 0.0),
        (-np.sin(turn), np.cos(turn), 0.0),
    )
    calls.clear()
    np.testing.assert_allclose(resample_to_grid(rotated, grid), resampled_point_by_point(rotated, grid), atol=0.01)
    assert len(calls) == grid.shape[0], "a rotated phase is sampled point by point, slice by slice"


def fine_volumes(rng: np.random.Generator) -> list[CTVolume]:
    """Volumes finer than a 1 mm grid, as a clinical CT is: uneven slices, and slices drifting in-plane."""
    offsets = [0.0, 0.8, 1.5, 2.5, 3.0, 4.2, 5.0, 6.3, 7.0, 7.5, 8.8, 10.0]
    hu = rng.normal(0, 300, (len(offsets), 23, 21))
    return [
        volume_on(hu, (1.0, -2.0, 3.0), (0.45, 0.5), offsets),
        volume_on(hu, (1.0, -2.0, 3.0), (0.45, 0.5), offsets, drift_mm=0.004),  # point by point
    ]


def test_a_block_of_the_slices_equals_that_block_of_the_whole_map() -> None:
    rng = np.random.default_rng(8)
    for volume in fine_volumes(rng):
        grid = Grid.over(volume, 1.0)
        values = rng.random(grid.shape, dtype=np.float32)
        box = (slice(3, 9), slice(0, 7), slice(12, 21))
        assert np.array_equal(grid_to_slices(values, grid, volume, box), grid_to_slices(values, grid, volume)[box])


@pytest.mark.parametrize("seed", range(8))
def test_the_reach_of_a_map_holds_every_voxel_it_is_carried_into(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for volume in fine_volumes(rng):
        grid = Grid.over(volume, 1.0)
        mask = np.zeros(grid.shape, dtype=bool)
        for _ in range(int(rng.integers(1, 3))):  # one voxel or a small blob, at the grid's edges too
            start = [int(rng.choice([0, rng.integers(0, n), n - 1])) for n in grid.shape]
            mask[tuple(slice(s, s + int(rng.integers(1, 3))) for s in start)] = True
        box = ct_volume.reach_of(mask, grid, volume)
        assert box is not None
        carried = grid_to_slices(mask.astype(np.float32), grid, volume) > 0
        outside = np.ones(carried.shape, dtype=bool)
        outside[box] = False
        assert not (carried & outside).any(), "a voxel the mask is carried into lies outside its reach"
        # and the block is no larger than the mask's voxels plus the margin, in the volume's own voxels
        held = np.argwhere(carried)
        spacing = volume.spacing_mm()
        for axis, part in enumerate(box):
            slack = int(np.ceil((ct_volume._REACH_MARGIN + 1) * grid.spacing_mm / spacing[axis]))
            assert part.start >= held[:, axis].min() - slack and part.stop <= held[:, axis].max() + 1 + slack


def test_an_empty_map_reaches_nothing() -> None:
    volume = fine_volumes(np.random.default_rng(9))[0]
    grid = Grid.over(volume, 1.0)
    assert ct_volume.reach_of(np.zeros(grid.shape, dtype=bool), grid, volume) is None
