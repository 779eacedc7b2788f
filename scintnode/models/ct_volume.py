"""CT series to volumes in patient space: slices sorted, geometry checked, resampled onto another grid.

Sits between the episode's CT instances and the dual-phase U-Net (ct_unet.py): each phase becomes a
`CTVolume`; the enhanced one is resampled onto the unenhanced one's slices when their geometry differs.

Accepted: one series of parallel axial-or-oblique slices, any arrival order, any in-plane direction, rescale
slope/intercept, slices unevenly spaced along their normal (interpolated between neighbours, never assumed
even). Refused with a message naming the series: mixed orientations, sizes or pixel spacings, duplicate
slice positions, and gantry tilt (slices stacked off their normal, i.e. a sheared volume, which needs
re-slicing the scanner should have done).

A volume keeps its slices' stored values (views on the data sets' Pixel Data where it is uncompressed) and
turns a slice into Hounsfield units only when it is sampled. A clinical series of 200 slices of 512x512 as
float32 is 200 MB per phase, and writing that much fresh memory took longer than the rescaling itself."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydicom import Dataset

from scintnode.models.ct_slices import VolumeNotUsable, rescale_of, rescaled, stored_values

# Slice orientation cosines and pixel spacings that differ by less than this count as the same.
_TOLERANCE = 1e-3
# Slice offsets off the normal, in mm, below which a series counts as untilted (rounding in headers).
_TILT_TOLERANCE_MM = 0.05
# Resampling goes axis by axis when the geometry keeps each other index within this many voxels of constant.
_SEPARABLE_TOLERANCE = 1e-3
# Grid voxels added on each side of a map's voxels to find the volume voxels they reach (see reach_of).
_REACH_MARGIN = 2

Box = tuple[slice, ...]  # a block of a volume: one slice per axis (slices, rows, columns)


@dataclass(frozen=True)
class CTVolume:
    """One CT series as (slices, rows, columns) voxels with their patient geometry: each slice's stored values
    and the rescale that makes them Hounsfield units.

    Patient coordinates (LPS, mm) of voxel (k, r, c): positions[k] + c * column_spacing * row_direction +
    r * row_spacing * column_direction, following DICOM's Image Position/Orientation (Patient)."""

    stored: tuple[np.ndarray, ...]  # (rows, columns) stored values of each slice, in volume order
    rescale: tuple[tuple[float, float], ...]  # (slope, intercept) of each slice
    positions: np.ndarray  # (slices, 3) Image Position (Patient) of each slice, sorted along the normal
    row_direction: np.ndarray  # (3,) direction of increasing column index (first IOP triplet)
    column_direction: np.ndarray  # (3,) direction of increasing row index (second IOP triplet)
    pixel_spacing: tuple[float, float]  # row spacing, column spacing in mm (DICOM Pixel Spacing order)
    sop_instance_uids: tuple[str, ...]  # of each slice, in volume order
    series_uid: str

    @classmethod
    def from_hounsfield(
        cls,
        hu: np.ndarray,
        positions: np.ndarray,
        row_direction: np.ndarray,
        column_direction: np.ndarray,
        pixel_spacing: tuple[float, float],
        sop_instance_uids: tuple[str, ...],
        series_uid: str,
    ) -> CTVolume:
        """A volume of HU values given as one (slices, rows, columns) array (slope 1, intercept 0)."""
        slices = tuple(np.asarray(plane, dtype=np.float32) for plane in hu)
        return cls(
            slices,
            ((1.0, 0.0),) * len(slices),
            positions,
            row_direction,
            column_direction,
            pixel_spacing,
            sop_instance_uids,
            series_uid,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, columns = self.stored[0].shape
        return len(self.stored), rows, columns

    def hounsfield_slice(self, index: int) -> np.ndarray:
        """Slice `index` in HU (float32, a new array)."""
        return rescaled(self.stored[index], *self.rescale[index])

    def hounsfield(self) -> np.ndarray:
        """The whole volume in HU (float32): for sampling at points off the volume's axes."""
        hu = np.empty(self.shape, dtype=np.float32)
        for index, (stored, (slope, intercept)) in enumerate(zip(self.stored, self.rescale, strict=True)):
            rescaled(stored, slope, intercept, hu[index])
        return hu

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def slice_offsets(self) -> np.ndarray:
        """Each slice's distance along the normal (mm), increasing."""
        return np.asarray(self.positions @ self.normal, dtype=np.float64)

    def spacing_mm(self) -> tuple[float, float, float]:
        """Slice spacing (the smallest gap; 1 mm for one slice), row and column spacing."""
        offsets = self.slice_offsets
        gap = float(np.diff(offsets).min()) if len(offsets) > 1 else 1.0
        return (gap, *self.pixel_spacing)

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
        rows, columns = volume.shape[1:]
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
        r = np.arange(self.shape[1], dtype=np.float64)[:, None, None] * self.spacing_mm * self.axes[1]
        c = np.arange(self.shape[2], dtype=np.float64)[None, :, None] * self.spacing_mm * self.axes[2]
        points: np.ndarray = (self.origin + index * self.spacing_mm * self.axes[0] + r + c).reshape(-1, 3)
        return points

    def indices(self, points: np.ndarray) -> np.ndarray:
        """Fractional (slice, row, column) grid indices of patient points (n, 3)."""
        return np.asarray((points - self.origin) @ self.axes.T / self.spacing_mm, dtype=np.float64)


def resample_to_grid(volume: CTVolume, grid: Grid, fill: float = -1024.0) -> np.ndarray:
    """`volume`'s HU on `grid` (trilinear; `fill` where the grid reaches past the volume).

    Axis by axis when the grid lies on the volume's axes (the reference phase, and a phase scanned in the same
    orientation); otherwise point by point, slice by slice."""
    axes = _steps(grid.axes, (grid.spacing_mm,) * 3, grid.shape)
    volume_axes = np.stack([volume.normal, volume.column_direction, volume.row_direction])
    if _aligned(axes, volume_axes, volume.spacing_mm()):
        lines = [volume.fractional_indices(grid.origin + step) for step in axes]
        indices = [line[:, axis] for axis, line in enumerate(lines)]
        return sample_separable(volume.hounsfield_slice, volume.shape, indices, fill)
    rows, columns = grid.shape[1:]
    hu = volume.hounsfield()
    return np.stack(
        [
            sample_array(hu, volume.fractional_indices(grid.points(k)), (rows, columns), fill)
            for k in range(grid.shape[0])
        ]
    )


def grid_to_slices(values: np.ndarray, grid: Grid, volume: CTVolume, box: Box | None = None) -> np.ndarray:
    """A map on `grid` (e.g. a probability) brought back onto `volume`'s own slices (trilinear, 0 outside);
    with `box`, onto that block of the volume's voxels only (the result has the block's shape)."""
    rows, columns = volume.shape[1:]
    slices, row_range, column_range = box or (slice(None),) * 3
    first = volume.positions[0]
    in_plane = _steps(np.stack([volume.column_direction, volume.row_direction]), volume.pixel_spacing, (rows, columns))
    # the slices' own offsets, so an in-plane drift of their positions (below the tilt tolerance) counts too
    axes = [volume.positions - first, *in_plane]
    row_steps, column_steps = in_plane[0][row_range], in_plane[1][column_range]
    if _aligned(axes, grid.axes, (grid.spacing_mm,) * 3):
        lines = [grid.indices(points) for points in (volume.positions[slices], first + row_steps, first + column_steps)]
        indices = [line[:, axis] for axis, line in enumerate(lines)]
        return sample_separable(values.__getitem__, values.shape, indices, 0.0)
    plane = (row_steps[:, None] + column_steps[None, :]).reshape(-1, 3)
    shape = (len(row_steps), len(column_steps))
    return np.stack(
        [sample_array(values, grid.indices(position + plane), shape, 0.0) for position in volume.positions[slices]]
    )


def reach_of(mask: np.ndarray, grid: Grid, volume: CTVolume) -> Box | None:
    """The block of `volume`'s voxels that `grid_to_slices` can carry the voxels of `mask` (a boolean map on
    `grid`) into; None when the mask is empty or reaches no voxel of the volume.

    A trilinear value blends the grid voxels less than one spacing away on each axis, so a voxel outside the
    block takes nothing from the mask. The block spans the mask's bounding box widened by _REACH_MARGIN grid
    voxels (one for the blend, one for the half voxel clamped at the grid's border, the slices' in-plane
    drift and rounding), mapped into the volume through its corners."""
    bounds = []
    for axis in range(3):
        held = np.flatnonzero(mask.any(axis=tuple(other for other in range(3) if other != axis)))
        if held.size == 0:
            return None
        bounds.append((held[0] - _REACH_MARGIN, held[-1] + _REACH_MARGIN))
    corners = np.array(list(itertools.product(*bounds)), dtype=np.float64)
    indices = volume.fractional_indices(grid.origin + corners * grid.spacing_mm @ grid.axes)
    box = []
    for axis, size in enumerate(volume.shape):
        start = max(int(np.floor(indices[:, axis].min())), 0)
        stop = min(int(np.ceil(indices[:, axis].max())) + 1, size)
        if start >= stop:
            return None
        box.append(slice(start, stop))
    return tuple(box)


def _steps(directions: np.ndarray, spacings: Sequence[float], counts: Sequence[int]) -> list[np.ndarray]:
    """Per axis, the (count, 3) patient offsets of its voxels from the first: index * spacing * direction."""
    return [
        np.arange(count, dtype=np.float64)[:, None] * spacing * direction
        for direction, spacing, count in zip(directions, spacings, counts, strict=True)
    ]


def _aligned(target_steps: Sequence[np.ndarray], source_axes: np.ndarray, source_spacing: Sequence[float]) -> bool:
    """Whether moving along each target axis, over its whole extent, moves along one source axis only (other
    source indices change by at most _SEPARABLE_TOLERANCE voxels), so trilinear sampling separates by axis."""
    reach = np.stack([np.abs(steps @ source_axes.T).max(axis=0) for steps in target_steps])
    reach /= np.asarray(source_spacing, dtype=np.float64)[None, :]
    return bool((reach[~np.eye(3, dtype=bool)] <= _SEPARABLE_TOLERANCE).all())


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
    stored = tuple(stored_values(ds, where) for ds in ordered)
    return CTVolume(
        stored=stored,
        rescale=tuple(rescale_of(ds) for ds in ordered),
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


def sample_separable(
    plane: Callable[[int], np.ndarray], shape: tuple[int, ...], indices: Sequence[np.ndarray], fill: float
) -> np.ndarray:
    """Trilinear values of a (slices, rows, columns) volume of `shape`, whose slice k is `plane(k)`, on the outer
    product of per-axis fractional indices (three 1-D arrays); `fill` outside, as `sample_array` does point by
    point. Trilinear weights are the product of per-axis linear weights, so each slice is a blend of two source
    slices, then of columns, then of rows; a source slice is asked for only while it is blended. The blends
    are torch's `lerp` and `index_select`, which use every core: numpy's gathers took 0.37 s to bring a
    clinical CT's probability back onto its 200 slices of 512x512, these 0.14 s."""
    (z0, z1, wz, z_out), (r0, r1, wr, r_out), (c0, c1, wc, c_out) = (
        _linear_weights(np.asarray(index, dtype=np.float64), size) for index, size in zip(indices, shape, strict=True)
    )
    result = np.empty((len(z0), len(r0), len(c0)), dtype=np.float32)
    into = torch.from_numpy(result)
    rows_low, rows_high, columns_low, columns_high = (torch.from_numpy(v) for v in (r0, r1, c0, c1))
    row_weight, column_weight = torch.from_numpy(wr)[:, None], torch.from_numpy(wc)[None, :]
    held: dict[int, torch.Tensor] = {}  # the source slices of the last blend: neighbouring slices share them
    for k in range(len(z0)):
        if z_out[k]:
            result[k] = fill
            continue
        needed = (int(z0[k]),) if wz[k] == 0.0 else (int(z0[k]), int(z1[k]))
        held = {index: held[index] if index in held else _float_tensor(plane(index)) for index in needed}
        source = [held[index] for index in needed]
        blended = source[0] if len(source) == 1 else torch.lerp(source[0], source[1], float(wz[k]))
        columns = torch.lerp(blended.index_select(1, columns_low), blended.index_select(1, columns_high), column_weight)
        torch.lerp(columns.index_select(0, rows_low), columns.index_select(0, rows_high), row_weight, out=into[k])
    result[:, r_out, :] = fill
    result[:, :, c_out] = fill
    return result


def _float_tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _linear_weights(index: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper neighbour, upper weight, and outside flag of fractional indices on an axis of `size`
    (clamped to the end voxels within half a voxel, as grid_sample's border padding is)."""
    clamped = np.clip(index, 0.0, size - 1.0)
    lower = np.minimum(np.floor(clamped).astype(np.intp), max(size - 2, 0))
    upper = np.minimum(lower + 1, size - 1)
    weight = (clamped - lower).astype(np.float32)
    return lower, upper, weight, (index < -0.5) | (index > size - 0.5)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm < 0.5:
        raise VolumeNotUsable(f"Image Orientation (Patient) holds a zero direction {vector.tolist()}")
    return np.asarray(vector / norm, dtype=np.float64)
