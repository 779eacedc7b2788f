"""ParaNet preprocessing (paper 000 §2.1): each planar image cropped to the neck and mediastinum, annotations and
artefacts removed, resized to the network's square and intensity normalised.

Infer stage, between reading a job's NM sources and the network; training runs the same code on phantom
arrays, so what the network learnt from is what it sees in a site's images (single- or multi-frame, any vendor)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from pydicom import Dataset

from scintnode.models.i131_neck_preprocess import crop_box
from scintnode.models.nm_input import ImageNotUsable, PlanarFrame, pick_views, read_planar_frames
from scintnode.models.planar import FrameBox, cut_box, intensity_scale

# Side of the square kept: the neck from the submandibular glands down to the upper mediastinum. Fields of view
# up to this are only padded to a square (pinhole images, whose pixel spacing says little, are never cut).
FIELD_MM = 220.0
# A pixel this many times hotter than the median of its 5x5 neighbourhood (plus Poisson noise) is an artefact:
# a dead/hot detector element, a point marker or a burned-in text stroke. Real uptake is blurred by the camera.
_SPIKE_FACTOR = 4.0
# Grey statistics of ImageNet (the mean of its three channels), so a site's ImageNet VGG19 sees its scale.
GREY_MEAN = 0.449
GREY_STD = 0.226
NETWORK_PERCENTILE = 97.0
INPUT_CEILING = 3.0  # of the network scale: brighter is clipped (an injection site or a contamination spot)
IDENTITY = np.eye(2, 3, dtype=np.float32)
# A registration that moves the late image further than this is a failed one (a re-positioned neck moves a few
# centimetres at most): the images are then used as cut.
_MAX_SHIFT_FRACTION = 0.25
_MAX_ROTATION_DEG = 20.0


@dataclass(frozen=True)
class PreparedImage:
    """One source image made ready for a ParaNet path, and what maps results back onto its frame."""

    network_input: np.ndarray  # (S, S) float32 0..INPUT_CEILING (standardised later, in `standardise`)
    display: np.ndarray  # (rows, columns) float32 0..1: the upright source frame as shown
    box: FrameBox  # the square of the upright frame the network saw
    frame: PlanarFrame
    # 2x3 affine from the network-input pixels the maps and candidates use (the early image's) to this image's
    # own network-input pixels: the identity except for a late image registered onto the early one.
    warp: np.ndarray = field(default_factory=lambda: IDENTITY.copy())


def anterior_frame(ds: Dataset, source_index: int = 0) -> PlanarFrame:
    """The anterior frame of a planar NM image (coded view, then text), else its first frame."""
    frames = read_planar_frames(ds, source_index)
    chosen = pick_views(frames, ["anterior"]).get("anterior")
    if chosen is None:
        named = [f.view for f in frames]
        if len(frames) > 1:
            raise ImageNotUsable(
                f"{ds.get('SOPInstanceUID', '?')} has {len(frames)} frames with views {named} and none is anterior; "
                "ParaNet reads anterior planar views"
            )
        chosen = frames[0]
    return chosen


def remove_artefacts(counts: np.ndarray) -> np.ndarray:
    """Isolated spikes (hot pixels, markers, burned-in text) replaced by their neighbourhood's median."""
    image = np.clip(np.asarray(counts, dtype=np.float32), 0.0, None)
    median = _median5(image)
    spike = image > _SPIKE_FACTOR * median + 3.0 * np.sqrt(median + 1.0) + 2.0
    return np.where(spike, median, image).astype(np.float32)


def _median5(image: np.ndarray) -> np.ndarray:
    # cv2.medianBlur takes float32 only up to a 5x5 kernel, which is what we want.
    return np.asarray(cv2.medianBlur(np.ascontiguousarray(image, dtype=np.float32), 5), dtype=np.float32)


def neck_box(counts: np.ndarray, pixel_spacing_mm: float | None, field_mm: float = FIELD_MM) -> FrameBox:
    """The square the network sees: `field_mm` on the neck's midline when the frame is wider, else the frame."""
    rows, columns = counts.shape
    if pixel_spacing_mm and pixel_spacing_mm > 0 and max(rows, columns) * pixel_spacing_mm > field_mm:
        return crop_box(counts, pixel_spacing_mm, field_mm)
    size = max(rows, columns)
    return FrameBox(rows, columns, (rows - size) // 2, (columns - size) // 2, size)


def prepare_counts(
    counts: np.ndarray, pixel_spacing_mm: float | None, image_size: int, box: FrameBox | None = None
) -> tuple[np.ndarray, np.ndarray, FrameBox]:
    """(network input (S, S) 0..INPUT_CEILING, display (rows, columns) 0..1, box) of an upright count image.

    `box` reuses another image's crop: the late MIBI image is cut like the early one when both have the same
    grid, so a gland sits at the same input position in both paths, as a reader compares them."""
    clean = remove_artefacts(counts)
    if clean.ndim != 2 or min(clean.shape) < 8:
        raise ImageNotUsable(f"expected a 2-D frame of at least 8x8 pixels, got shape {clean.shape}")
    if box is None or (box.rows, box.columns) != clean.shape:
        box = neck_box(clean, pixel_spacing_mm)
    square = cut_box(clean, box)
    interpolation = cv2.INTER_AREA if box.size > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (image_size, image_size), interpolation=interpolation)
    network_input = np.clip(resized / network_scale(resized), 0.0, INPUT_CEILING).astype(np.float32)
    display = np.clip(clean / intensity_scale(clean), 0.0, 1.0).astype(np.float32)
    return network_input, display, box


def network_scale(image: np.ndarray) -> float:
    """The count level that becomes 1.0 in the network input: a percentile that a gland cannot set.

    A focus of a few hundred square millimetres is well under 1 % of the field; scaled to a top percentile, a
    retained gland would dim the whole late image and hand the network a global shortcut that no heatmap can
    place. Scaled to the 97th percentile (thyroid, salivary glands), a gland is as bright as it is, up to
    INPUT_CEILING."""
    scale = float(np.percentile(image, NETWORK_PERCENTILE))
    return scale if scale > 0 else max(float(image.max()), 1.0)


def prepare_source(ds: Dataset, source_index: int, image_size: int, box: FrameBox | None = None) -> PreparedImage:
    """A job's NM source through §2.1: anterior frame, upright, cleaned, cropped, resized, normalised."""
    frame = anterior_frame(ds, source_index)
    upright = frame.upright.apply(frame.pixels)
    spacing = min(frame.pixel_spacing_mm) if frame.pixel_spacing_mm else None
    network_input, display, used = prepare_counts(upright, spacing, image_size, box)
    return PreparedImage(network_input, display, used, frame)


def register(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`moving` rigidly registered onto `reference` (both network inputs), and the warp from reference pixels to
    moving pixels.

    The patient is positioned again for the 2-hour image, so the same gland sits centimetres apart in the early
    and late inputs; registered, the early and late paths' maps describe the same place, and a candidate taken
    from both is one point that `warp` carries back onto the late image. Enhanced-correlation (ECC) alignment of
    the smoothed images; when it fails or wanders off, the late image is used as cut."""
    size = reference.shape[1], reference.shape[0]
    smooth = [cv2.GaussianBlur(np.asarray(i, dtype=np.float32), (0, 0), 1.5) for i in (reference, moving)]
    if min(float(i.max()) for i in smooth) <= 0:
        return moving.astype(np.float32), IDENTITY.copy()
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    try:
        _, warp = cv2.findTransformECC(
            smooth[0] / smooth[0].max(),
            smooth[1] / smooth[1].max(),
            IDENTITY.copy(),
            cv2.MOTION_EUCLIDEAN,
            criteria,
            None,
            5,
        )
    except cv2.error:  # no convergence: nothing in common to align on
        return moving.astype(np.float32), IDENTITY.copy()
    shift = float(np.hypot(warp[0, 2], warp[1, 2]))
    rotation = abs(float(np.degrees(np.arctan2(warp[1, 0], warp[0, 0]))))
    if shift > _MAX_SHIFT_FRACTION * max(size) or rotation > _MAX_ROTATION_DEG:
        return moving.astype(np.float32), IDENTITY.copy()
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    registered = cv2.warpAffine(np.asarray(moving, dtype=np.float32), warp, size, flags=flags, borderValue=0.0)
    return np.clip(registered, 0.0, INPUT_CEILING).astype(np.float32), warp.astype(np.float32)


def register_prepared(reference: PreparedImage, moving: PreparedImage) -> PreparedImage:
    """`moving` with its network input registered onto `reference`'s (see `register`)."""
    registered, warp = register(reference.network_input, moving.network_input)
    return replace(moving, network_input=registered, warp=warp)


def warp_point(warp: np.ndarray, column: float, row: float) -> tuple[float, float]:
    """A point in DICOM convention (pixel centres at +0.5) through a 2x3 pixel-index warp."""
    x, y = warp @ np.array([column - 0.5, row - 0.5, 1.0], dtype=np.float64)
    return float(x) + 0.5, float(y) + 0.5


def warp_map(image: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """An image over the reference's pixels carried onto the moved image's pixels (the inverse of `register`)."""
    size = image.shape[1], image.shape[0]
    return np.asarray(cv2.warpAffine(image.astype(np.float32), warp, size, flags=cv2.INTER_LINEAR, borderValue=0.0))


def standardise(images: np.ndarray) -> np.ndarray:
    """Prepared images (1.0 = the network scale) to an ImageNet VGG's scale (an absent thyroid scan stays constant)."""
    return ((np.asarray(images, dtype=np.float32) - GREY_MEAN) / GREY_STD).astype(np.float32)
