"""A CT slice's stored values and its Hounsfield units, decoded with numpy and pydicom alone.

ct_volume builds its volumes from these, and write/seg's key image reads one slice with them. They live apart
from ct_volume, which resamples with torch, so that importing the writers (and so the node) does not import
torch: 180 MB of memory and a second at start for a node that runs no network."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian


class VolumeNotUsable(ValueError):
    """The CT instances cannot be made into one volume; the message says which series and why."""


def slice_hounsfield(ds: Dataset, where: str = "CT") -> np.ndarray:
    """The slice's stored values rescaled to HU (float32)."""
    return rescaled(stored_values(ds, where), *rescale_of(ds))


def stored_values(ds: Dataset, where: str = "CT") -> np.ndarray:
    """The slice's stored values as one (rows, columns) array; VolumeNotUsable if they cannot be decoded.

    Uncompressed little-endian 16-bit values are a read-only view on Pixel Data when every value is within
    Bits Stored (so pydicom's masking of the unused high bits would change nothing); anything else is decoded
    by pydicom, without its cache on the data set: a job keeps its data sets until its results are written."""
    view = _pixel_data_view(ds)
    if view is not None:
        return view
    try:
        stored: np.ndarray = pixel_array(ds)
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise VolumeNotUsable(f"{where}: cannot decode slice {ds.SOPInstanceUID}: {exc}") from exc
    if stored.shape != (ds.Rows, ds.Columns):
        raise VolumeNotUsable(f"{where}: slice {ds.SOPInstanceUID} is not a single grey frame ({stored.shape})")
    return stored


def _pixel_data_view(ds: Dataset) -> np.ndarray | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    if ds.get("BitsAllocated") != 16 or ds.get("SamplesPerPixel", 1) != 1 or int(ds.get("NumberOfFrames") or 1) != 1:
        return None
    signed, bits = ds.get("PixelRepresentation"), ds.get("BitsStored")
    rows, columns = int(ds.Rows), int(ds.Columns)
    data = ds.PixelData
    if signed not in (0, 1) or not isinstance(bits, int) or not 1 <= bits <= 16 or len(data) < 2 * rows * columns:
        return None
    view = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * columns).reshape(rows, columns)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if bits < 16 and (int(view.min()) < low or int(view.max()) > high):
        return None
    return view


def rescale_of(ds: Dataset) -> tuple[float, float]:
    """(Rescale Slope, Rescale Intercept), 1 and 0 where absent."""
    return float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)


def rescaled(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray | None = None) -> np.ndarray:
    """`stored` * slope + intercept as float32, into `out` when given."""
    if out is None:
        out = np.empty(stored.shape, dtype=np.float32)
    np.copyto(out, stored, casting="unsafe")  # then scaled in float32: a third of the time of a mixed-type multiply
    if slope != 1.0:
        out *= slope
    out += intercept
    return out
