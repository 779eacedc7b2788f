"""Reads planar NM sources for the networks: every frame as float counts, with its projection and orientation.

Infer stage, before a network's own preprocessing. Decodes any transfer syntax pydicom has a pixel plugin for
(JPEG lossless, JPEG-LS, JPEG 2000, RLE), applies rescale, sign and photometric sense, and says which frame is
anterior or posterior: View Code Sequence of the frame's detector, then the top-level one, then text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from scintnode.route.facts import VIEWS, canonical_code, derive_facts, normalise_text

# Text naming a whole-body view; "POST" followed by therapy words is an I-131 series name, not a view.
_VIEW_WORDS = re.compile(r"\b(ANT(?:ERIOR)?|POST(?:ERIOR)?)\b(?! ?(?:THERAPY|TX|RX|THER|INJ|OP|SURG|ABLATION|DOSE))")
_TEXT_SOURCES = ("SeriesDescription", "ImageComments", "ProtocolName")


class ImageNotUsable(ValueError):
    """The source cannot be read as planar grey frames; the message says why and which instance."""


@dataclass(frozen=True)
class Upright:
    """How a stored frame turns into the upright picture (head at the top): transpose, then flips.

    Left and right stay as stored, so an anterior view keeps the patient's right on the image's left."""

    transpose: bool = False
    flip_vertical: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        out = image.T if self.transpose else image
        return np.ascontiguousarray(out[::-1] if self.flip_vertical else out)

    def invert(self, image: np.ndarray) -> np.ndarray:
        """An upright map back onto the stored frame's grid."""
        out = image[::-1] if self.flip_vertical else image
        return np.ascontiguousarray(out.T if self.transpose else out)


@dataclass(frozen=True)
class PlanarFrame:
    """One frame of one source, as float counts in the stored orientation."""

    pixels: np.ndarray  # (rows, columns) float32, rescaled, MONOCHROME2 sense
    source_index: int  # index into the job's sources
    frame_number: int  # 1-based
    view: str | None  # a route.facts view name ("anterior", "posterior", ...), None when nothing says
    view_from: str  # where the view came from, for logs and errors
    upright: Upright
    pixel_spacing_mm: tuple[float, float] | None


def decode_frames(ds: Dataset) -> np.ndarray:
    """All frames of ``ds`` as (frames, rows, columns) float32 counts (Modality LUT and sign applied)."""
    uid = ds.get("SOPInstanceUID", "<no SOP Instance UID>")
    if "PixelData" not in ds:
        raise ImageNotUsable(f"{uid} has no pixel data")
    try:
        array = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for undecodable data or a missing pixel plugin
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageNotUsable(f"cannot decode the pixel data of {uid} (transfer syntax {syntax}): {exc}") from exc
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        array = array.mean(axis=-1)  # an RGB capture of a grey image: the channels carry the same counts
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or min(array.shape[1:]) < 8:
        raise ImageNotUsable(f"{uid}: expected planar frames of at least 8x8 pixels, got shape {array.shape}")
    counts = array.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    counts = counts * np.float32(slope) + np.float32(intercept)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        counts = counts.max(axis=(1, 2), keepdims=True) - counts
    if not np.isfinite(counts).all():
        raise ImageNotUsable(f"{uid}: pixel data holds NaN or infinite values")
    return counts


def read_planar_frames(ds: Dataset, source_index: int = 0) -> list[PlanarFrame]:
    """Every frame of ``ds`` with its view, in frame order."""
    counts = decode_frames(ds)
    views = frame_views(ds, counts.shape[0])
    spacing = ds.get("PixelSpacing")
    pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None
    upright = upright_transform(ds, counts.shape[1], counts.shape[2])
    return [
        PlanarFrame(counts[i], source_index, i + 1, view, origin, upright, pixel_spacing)
        for i, (view, origin) in enumerate(views)
    ]


def frame_views(ds: Dataset, n_frames: int) -> list[tuple[str | None, str]]:
    """(view, where it came from) for each frame: detector View Code, top-level View Code, then text."""
    detectors = list(ds.get("DetectorInformationSequence") or [])
    vector = _detector_vector(ds, n_frames)
    coded = [_coded_view(detectors[d - 1]) if 0 < d <= len(detectors) else None for d in vector]
    if all(view is not None for view in coded):
        return [(view, "View Code Sequence of the frame's detector") for view in coded]
    if n_frames == 1:
        fact = derive_facts(ds).view  # top-level code, then the detectors agreeing, then Series Description
        if isinstance(fact.value, str):
            return [(fact.value, f"{fact.source}: {fact.detail}")]
    top = _coded_view(ds)
    named = _views_in_text(ds)
    out: list[tuple[str | None, str]] = []
    for index in range(n_frames):
        if coded[index] is not None:
            out.append((coded[index], "View Code Sequence of the frame's detector"))
        elif index == 0 and top is not None:
            out.append((top, "top-level View Code Sequence"))
        elif named is not None and len(named[0]) == n_frames:
            out.append((named[0][index], f"{named[1]} names the views in frame order"))
        else:
            out.append((None, "no View Code Sequence and no view in the text"))
    return out


def upright_transform(ds: Dataset, rows: int, columns: int) -> Upright:
    """From Patient Orientation (0020,0020): where the head (H) or feet (F) lie; else from the shape.

    A frame stored lying down (more columns than rows) with no orientation is taken to have the head on
    the left, the way cameras that store whole-body scans 256 rows high display them."""
    value = ds.get("PatientOrientation")
    row_direction, column_direction = (
        (str(value[0]).upper(), str(value[1]).upper()) if value and len(value) == 2 else ("", "")
    )
    if column_direction.startswith(("F", "H")):
        return Upright(transpose=False, flip_vertical=column_direction.startswith("H"))
    if row_direction.startswith(("F", "H")):
        return Upright(transpose=True, flip_vertical=row_direction.startswith("H"))
    return Upright(transpose=columns > rows)


def _detector_vector(ds: Dataset, n_frames: int) -> list[int]:
    value = ds.get("DetectorVector")
    # pydicom gives a single value as a plain int and several as a MultiValue
    vector = [int(value)] if isinstance(value, int) else [int(v) for v in value or []]
    return vector if len(vector) == n_frames else list(range(1, n_frames + 1))


def _coded_view(item: Dataset) -> str | None:
    for code in item.get("ViewCodeSequence") or []:
        value, scheme = canonical_code(str(code.get("CodeValue", "")), str(code.get("CodingSchemeDesignator", "")))
        for term in VIEWS:
            if scheme == "SCT" and value == term.sct:
                return term.name
    return None


def _views_in_text(ds: Dataset) -> tuple[list[str], str] | None:
    """Anterior/posterior named in a text attribute, in the order written (e.g. 'WB ANT/POST')."""
    for keyword in _TEXT_SOURCES:
        text = ds.get(keyword)
        if not text:
            continue
        words = [m.group(1) for m in _VIEW_WORDS.finditer(normalise_text(str(text)))]
        if words:
            return ["anterior" if w.startswith("ANT") else "posterior" for w in words], keyword
    return None


def pick_views(frames: Sequence[PlanarFrame], wanted: Sequence[str]) -> dict[str, PlanarFrame]:
    """The first frame of each wanted view; frames with no view fill the views still missing, in order."""
    chosen: dict[str, PlanarFrame] = {}
    for frame in frames:
        if frame.view is not None and frame.view in wanted and frame.view not in chosen:
            chosen[frame.view] = frame
    unknown = [f for f in frames if f.view is None]
    for view in wanted:
        if view not in chosen and unknown:
            chosen[view] = unknown.pop(0)
    return chosen
