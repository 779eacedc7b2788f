"""CT series to volumes in patient space: slices sorted, geometry checked, resampled onto another grid.

Sits between the episode's CT instances and the dual-phase U-Net (ct_unet.py): each phase becomes a
`CTVolume`; the enhanced one is resampled onto the unenhanced one's slices when their geometry differs.

Accepted: one series of parallel axial-or-oblique slices, any arrival order, any in-plane direction, rescale
slope/intercept, slices unevenly spaced along their normal (interpolated between neighbours, never assumed
even). Refused with a message naming the series: mixed orientations, sizes or pixel spacings, duplicate
slice positions, and gantry tilt (slices stacked off their normal, i.e. a sheared volume, which needs
re-slicing the scanner should have done)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydicom import Dataset

# Slice orientation cosines and pixel spacings that differ by less than this count as the same.
_TOLERANCE = 1e-3
# Slice offsets off the normal, in mm, below which a series counts as untilted (rounding in headers).
_TILT_TOLERANCE_MM = 0.05


class VolumeNotUsable(ValueError):
    """The CT instances cannot be made into one volume; the message says which series and why."""


@dataclass(frozen=True)
class CTVolume:
    """One CT series as a (slices, rows, columns) array of Hounsfield units with its patient geometry.

    Patient coordinates (LPS, mm) of voxel (k, r, c): positions[k] + c * column_spacing * row_direction +
    r * row_spacing * column_direction, following DICOM's Image Position/Orientation (Patient)."""

    hu: np.ndarray  # float32 (slices, rows, columns)
    positions: np.ndarray  # (slices, 3) Image Position (Patient) of each slice, sorted along the normal
    row_direction: np.ndarray  # (3,) direction of increasing column index (first IOP triplet)
    column_direction: np.ndarray  # (3,) direction of increasing row index (second IOP triplet)
    pixel_spacing: tuple[float, float]  # row spacing, column spacing in mm (DICOM Pixel Spacing order)
    sop_instance_uids: tuple[str, ...]  # of each slice, in volume order
    series_uid: str

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def slice_offsets(self) -> np.ndarray:
        """Each slice's distance along the normal (mm), increasing."""
        return np.asarray(self.positions @ self.normal, dtype=np.float64)

    def fractional_indices(self, points: np.ndarray) -> np.ndarray:
        """(slice, row, column) fractional indices of patient points (n, 3); outside the volume they lie
        outside 0..n-1 (slices by linear extrapolation of the end spacing)."""
        relative = points - self.positions[0]
        row = relative @ self.column_direction / self.pixel_spacing[0]
        column = relative @ self.row_direction / self.pixel_spacing[1]
        offsets = self.slice_offsets
        along = points @ self.normal
        index = np.interp(along, offsets, np.arange(len(offsets), dtype=np.float64))
        if len(offsets) > 1:  # np.interp clamps; mark points beyond the end slices as outside
            first, last = offsets[1] - offsets[0], offsets[-1] - offsets[-2]
            index = np.where(along < offsets[0], (along - offsets[0]) / first, index)
            index = np.where(along > offsets[-1], len(offsets) - 1 + (along - offsets[-1]) / last, index)
        else:
            index = np.where(np.abs(along - offsets[0]) > 0.5, -2.0, 0.0)
        return np.stack([index, row, column], axis=1)


@dataclass(frozen=True)
class Grid:
    """An isotropic grid on a volume's own axes, from its first voxel over its extent: where the network looks."""

    origin: np.ndarray  # (3,) patient position of grid voxel (0, 0, 0)
    axes: np.ndarray  # (3, 3) unit directions of the slice, row and column index (normal, column, row direction)
    spacing_mm: float
    shape: tuple[int, int, int]

    @classmethod
    def over(cls, volume: CTVolume, spacing_mm: float) -> Grid:
        offsets = volume.slice_offsets
        rows, columns = volume.hu.shape[1:]
        extent = (
            offsets[-1] - offsets[0],
            (rows - 1) * volume.pixel_spacing[0],
            (columns - 1) * volume.pixel_spacing[1],
        )
        shape = tuple(int(np.floor(e / spacing_mm + 1e-6)) + 1 for e in extent)
        axes = np.stack([volume.normal, volume.column_direction, volume.row_direction])
        return cls(volume.positions[0].copy(), axes, spacing_mm, (shape[0], shape[1], shape[2]))

    def points(self, index: int) -> np.ndarray:
        """Patient coordinates of the voxels of grid slice `index`, (rows * columns, 3), row-major."""
        r = np.arange(self.shape[1], dtype=np.float64)[:, None, None] * self.axes[1]
        c = np.arange(self.shape[2], dtype=np.float64)[None, :, None] * self.axes[2]
        points: np.ndarray = (self.origin + index * self.spacing_mm * self.axes[0] + r + c).reshape(-1, 3)
        return points

    def indices(self, points: np.ndarray) -> np.ndarray:
        """Fractional (slice, row, column) grid indices of patient points (n, 3)."""
        return np.asarray((points - self.origin) @ self.axes.T / self.spacing_mm, dtype=np.float64)


def resample_to_grid(volume: CTVolume, grid: Grid, fill: float = -1024.0) -> np.ndarray:
    """`volume`'s HU on `grid` (trilinear; `fill` where the grid reaches past the volume), slice by slice."""
    rows, columns = grid.shape[1:]
    return np.stack(
        [
            sample_array(volume.hu, volume.fractional_indices(grid.points(k)), (rows, columns), fill)
            for k in range(grid.shape[0])
        ]
    )


def grid_to_slices(values: np.ndarray, grid: Grid, volume: CTVolume) -> np.ndarray:
    """A map on `grid` (e.g. a probability) brought back onto `volume`'s own slices, slice by slice."""
    rows, columns = volume.hu.shape[1:]
    r = np.arange(rows, dtype=np.float64)[:, None, None] * volume.pixel_spacing[0] * volume.column_direction
    c = np.arange(columns, dtype=np.float64)[None, :, None] * volume.pixel_spacing[1] * volume.row_direction
    plane = (r + c).reshape(-1, 3)
    return np.stack(
        [sample_array(values, grid.indices(position + plane), (rows, columns), 0.0) for position in volume.positions]
    )


def assemble_volume(datasets: Sequence[Dataset]) -> CTVolume:
    """The series of `datasets` (one CT series, any order) as a volume; VolumeNotUsable if it is not one."""
    if not datasets:
        raise VolumeNotUsable("no CT slices given")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise VolumeNotUsable(f"expected the slices of one series, got {len(series)} series")
    series_uid = series.pop()
    where = f"series {series_uid}"
    for ds in datasets:
        missing = [
            k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData") if k not in ds
        ]
        if missing:
            raise VolumeNotUsable(f"{where}: slice {ds.get('SOPInstanceUID', '?')} lacks {', '.join(missing)}")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > _TOLERANCE:
        raise VolumeNotUsable(f"{where}: slices have different orientations (Image Orientation (Patient))")
    row_direction, column_direction = _unit(orientations[0][:3]), _unit(orientations[0][3:])
    if abs(float(row_direction @ column_direction)) > _TOLERANCE:
        raise VolumeNotUsable(f"{where}: Image Orientation (Patient) directions are not perpendicular")
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
    if np.abs(spacings - spacings[0]).max() > _TOLERANCE or (spacings <= 0).any():
        raise VolumeNotUsable(f"{where}: slices have different or non-positive pixel spacings")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) != 1:
        raise VolumeNotUsable(f"{where}: slices have different matrix sizes {sorted(shapes)}")
    normal = np.cross(row_direction, column_direction)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    offsets = positions @ normal
    if len(offsets) > 1 and np.diff(offsets).min() < _TOLERANCE:
        raise VolumeNotUsable(f"{where}: two slices share one position; send each slice once")
    # Tilt: consecutive slices must be stacked along the normal; an in-plane drift means a sheared volume.
    in_plane = positions - positions[0] - np.outer(offsets - offsets[0], normal)
    if np.abs(in_plane).max() > _TILT_TOLERANCE_MM:
        raise VolumeNotUsable(
            f"{where}: slices are stacked off their normal by up to {np.abs(in_plane).max():.1f} mm "
            "(gantry tilt or a sheared reconstruction); reconstruct perpendicular slices at the scanner"
        )
    ordered = [datasets[int(i)] for i in order]
    return CTVolume(
        hu=np.stack([_hounsfield(ds, where) for ds in ordered]),
        positions=positions,
        row_direction=row_direction,
        column_direction=column_direction,
        pixel_spacing=(float(spacings[0][0]), float(spacings[0][1])),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered),
        series_uid=series_uid,
    )


def sample_array(array: np.ndarray, indices: np.ndarray, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Trilinear values of a (slices, rows, columns) array at fractional indices (n, 3); `fill` outside."""
    sizes = np.array(array.shape, dtype=np.float64)
    # grid_sample with align_corners=True maps -1 and 1 to the centres of the first and last voxel; each
    # voxel covers half a spacing either side, beyond that a point is outside
    normalised = 2.0 * indices / np.maximum(sizes - 1, 1) - 1.0
    grid = torch.from_numpy(normalised[:, ::-1].astype(np.float32).copy()).view(1, 1, 1, -1, 3)
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    with torch.no_grad():
        values = torch.nn.functional.grid_sample(
            source, grid, mode="bilinear", padding_mode="border", align_corners=True
        )
    result = values.view(-1).numpy().copy()
    result[((indices < -0.5) | (indices > sizes - 0.5)).any(axis=1)] = fill
    return result.reshape(shape).astype(np.float32)


def _hounsfield(ds: Dataset, where: str) -> np.ndarray:
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise VolumeNotUsable(f"{where}: cannot decode slice {ds.SOPInstanceUID}: {exc}") from exc
    if stored.ndim != 2:
        raise VolumeNotUsable(f"{where}: slice {ds.SOPInstanceUID} is not a single grey frame ({stored.shape})")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return stored * slope + intercept


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm < 0.5:
        raise VolumeNotUsable(f"Image Orientation (Patient) holds a zero direction {vector.tolist()}")
    return np.asarray(vector / norm, dtype=np.float64)
