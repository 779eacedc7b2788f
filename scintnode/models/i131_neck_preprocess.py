"""Image processing of paper 004 §2.2 for 131I neck scans: crop on the thyroid bed, histogram equalisation,
GrabCut segmentation, resize and channel standardisation, with OpenCV; every step kept for inspection.

Called by the i131-neck network (infer) and its training; `python -m scintnode.models.i131_neck_preprocess
IMAGE.dcm --out DIR` writes each step of a study as a PNG."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from scintnode.models.planar import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameBox,
    ImageNotUsable,
    cut_box,
    intensity_scale,
    read_frame,
)

# Side of the square crop centred on the thyroid bed. The paper crops 800 x 750 pixels of its rendered images
# around the bed by hand; a square keeps the 224 x 224 resize free of distortion.
FIELD_MM = 160.0
# Without a Pixel Spacing the crop is this fraction of the frame's larger side (about 160 mm of a 256 matrix).
FIELD_FRACTION = 0.3
# The GrabCut rectangle: its central share of the crop is "possibly thyroid bed", the rest is background.
GRABCUT_BOX_FRACTION = 0.7
GRABCUT_ITERATIONS = 5
IMAGE_SIZE = 224  # paper 004
# The neck's midline is found in the body outline: smoothed counts above this share of the band's typical level.
_BODY_LEVEL = 0.3
_STEP_NAMES = ("crop", "equalised", "grabcut_mask", "segmented", "resized", "standardised")


@dataclass(frozen=True)
class PreprocessSteps:
    """Every intermediate image of §2.2 for one frame, and the box that maps results back onto it."""

    box: FrameBox  # the crop, in source-frame pixels
    display: np.ndarray  # (rows, columns) float32 0..1: the whole source frame as shown
    crop: np.ndarray  # (s, s) uint8: the crop windowed to its own range, as the paper's JPG export
    equalised: np.ndarray  # (s, s) uint8 after cv2.equalizeHist
    grabcut_mask: np.ndarray  # (s, s) bool: what GrabCut kept as (probable) foreground
    grabcut_fallback: bool  # GrabCut failed or kept nothing, so the rectangle was kept instead
    segmented: np.ndarray  # (s, s, 3) uint8 BGR: equalised image with the background removed
    resized: np.ndarray  # (S, S, 3) uint8 BGR
    standardised: np.ndarray  # (3, S, S) float32, RGB order, ImageNet mean and std: the network input


def locate_thyroid_bed(counts: np.ndarray, pixel_spacing_mm: float | None) -> tuple[float, float]:
    """(row, column) pixel indices of the thyroid bed: the field's centre row, on the neck's midline.

    Neck scans are acquired with the neck centred; the column is the median midpoint of the body outline in the
    rows around the centre, so a patient lying off-centre is still cropped symmetrically."""
    rows, columns = counts.shape
    centre_row, centre_column = (rows - 1) / 2.0, (columns - 1) / 2.0
    spacing = pixel_spacing_mm if pixel_spacing_mm and pixel_spacing_mm > 0 else None
    sigma = 10.0 / spacing if spacing else max(rows, columns) / 50.0
    smooth = cv2.GaussianBlur(counts.astype(np.float32), (0, 0), sigmaX=sigma)
    half = _field_pixels(counts.shape, spacing) // 2
    band = smooth[max(0, int(centre_row) - half) : int(centre_row) + half + 1]
    level = float(np.percentile(band, 75.0))
    if level <= 0:
        return centre_row, centre_column
    midpoints = []
    for line in band > _BODY_LEVEL * level:
        inside = np.flatnonzero(line)
        if inside.size:
            midpoints.append((inside[0] + inside[-1]) / 2.0)
    return centre_row, float(np.median(midpoints)) if midpoints else centre_column


def crop_box(counts: np.ndarray, pixel_spacing_mm: float | None, field_mm: float = FIELD_MM) -> FrameBox:
    """The square crop of `field_mm` centred on the thyroid bed (may reach past the frame; padded with zeros)."""
    rows, columns = counts.shape
    spacing = pixel_spacing_mm if pixel_spacing_mm and pixel_spacing_mm > 0 else None
    size = _field_pixels(counts.shape, spacing, field_mm)
    centre_row, centre_column = locate_thyroid_bed(counts, spacing)
    return FrameBox(rows, columns, round(centre_row - (size - 1) / 2.0), round(centre_column - (size - 1) / 2.0), size)


def _field_pixels(shape: tuple[int, ...], spacing: float | None, field_mm: float = FIELD_MM) -> int:
    if spacing:
        return max(16, round(field_mm / spacing))
    return max(16, round(FIELD_FRACTION * max(shape)))


def window_to_uint8(crop: np.ndarray) -> np.ndarray:
    """Counts to 8 bits over the crop's own range, as a DICOM-to-JPG export does before §2.2.1."""
    low, high = float(crop.min()), float(crop.max())
    if high <= low:
        return np.zeros(crop.shape, dtype=np.uint8)
    return np.round((crop - low) * (255.0 / (high - low))).astype(np.uint8)


def equalise(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation (§2.2.1): grey levels spread so that every level holds about as many pixels."""
    return np.asarray(cv2.equalizeHist(np.ascontiguousarray(image, dtype=np.uint8)))


def grabcut(
    image: np.ndarray, box_fraction: float = GRABCUT_BOX_FRACTION, iterations: int = GRABCUT_ITERATIONS
) -> tuple[np.ndarray, bool]:
    """GrabCut (§2.2.2, Rother et al. 2004) started from a centred rectangle; the foreground mask and a fallback flag.

    Outside the rectangle is background for certain; inside, GrabCut's colour models decide. If it cannot run
    (e.g. a flat image) or keeps nothing, the rectangle itself is kept, so a bed is never blanked by accident."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"GrabCut needs a 2-D uint8 image, got {image.dtype} {image.shape}")
    if not 0.0 < box_fraction < 1.0:
        raise ValueError(f"box_fraction must lie strictly between 0 and 1, got {box_fraction}")
    height, width = image.shape
    box_w, box_h = max(2, round(width * box_fraction)), max(2, round(height * box_fraction))
    rect = ((width - box_w) // 2, (height - box_h) // 2, box_w, box_h)
    in_rect = np.zeros(image.shape, dtype=bool)
    in_rect[rect[1] : rect[1] + box_h, rect[0] : rect[0] + box_w] = True
    mask = np.zeros(image.shape, dtype=np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's RNG: seed it so a study always gives the same mask
    try:
        cv2.grabCut(
            cv2.cvtColor(image, cv2.COLOR_GRAY2BGR),
            mask,
            rect,
            background,
            foreground,
            iterations,
            cv2.GC_INIT_WITH_RECT,
        )
    except cv2.error:
        return in_rect, True
    kept = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if not kept.any():
        return in_rect, True
    return kept, False


def standardise(image_bgr: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 BGR to (3, S, S) float32 RGB with each channel standardised by the ImageNet mean and std."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return np.ascontiguousarray(((rgb - mean) / std).transpose(2, 0, 1))


def preprocess(
    frame: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None,
    image_size: int = IMAGE_SIZE,
    field_mm: float = FIELD_MM,
) -> PreprocessSteps:
    """The whole of §2.2 on one planar frame of counts, keeping every intermediate image."""
    counts = np.asarray(frame, dtype=np.float32)
    if counts.ndim != 2 or min(counts.shape) < 16:
        raise ImageNotUsable(f"expected a 2-D frame of at least 16x16 pixels, got shape {counts.shape}")
    if not np.isfinite(counts).all():
        raise ImageNotUsable("frame holds NaN or infinite values")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    counts = np.clip(counts, 0.0, None)
    spacing = min(pixel_spacing_mm) if pixel_spacing_mm else None
    box = crop_box(counts, spacing, field_mm)
    crop = window_to_uint8(cut_box(counts, box))
    equalised = equalise(crop)
    mask, fallback = grabcut(equalised)
    segmented = cv2.cvtColor(np.where(mask, equalised, 0).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    interpolation = cv2.INTER_AREA if box.size > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(segmented, (image_size, image_size), interpolation=interpolation)
    return PreprocessSteps(
        box=box,
        display=np.clip(counts / intensity_scale(counts), 0.0, 1.0).astype(np.float32),
        crop=crop,
        equalised=equalised,
        grabcut_mask=mask,
        grabcut_fallback=fallback,
        segmented=segmented,
        resized=resized,
        standardised=standardise(resized),
    )


def step_images(steps: PreprocessSteps) -> dict[str, np.ndarray]:
    """Each step as an 8-bit picture, in order; the standardised input is shown rescaled to its own range."""
    standardised = steps.standardised.transpose(1, 2, 0)[:, :, ::-1]
    low, high = float(standardised.min()), float(standardised.max())
    shown = (standardised - low) * (255.0 / (high - low)) if high > low else np.zeros_like(standardised)
    return {
        "crop": steps.crop,
        "equalised": steps.equalised,
        "grabcut_mask": steps.grabcut_mask.astype(np.uint8) * 255,
        "segmented": steps.segmented,
        "resized": steps.resized,
        "standardised": np.round(shown).astype(np.uint8),
    }


def write_step_pngs(steps: PreprocessSteps, folder: Path, stem: str) -> list[Path]:
    """Write `<stem>_<n>_<step>.png` for every step (plus the source frame) and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    pictures = {"source": np.round(steps.display * 255.0).astype(np.uint8), **step_images(steps)}
    written = []
    for number, (name, picture) in enumerate(pictures.items()):
        path = folder / f"{stem}_{number}_{name}.png"
        if not cv2.imwrite(str(path), picture):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scintnode.models.i131_neck_preprocess",
        description="Write every preprocessing step (paper 004 §2.2) of 131I neck images as PNGs.",
    )
    parser.add_argument("images", nargs="+", type=Path, help="NM DICOM files (the anterior frame is used)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help=f"network input side (default {IMAGE_SIZE})")
    args = parser.parse_args(argv)
    for path in args.images:
        try:
            source = read_frame(dcmread(path))
            steps = preprocess(source.pixels, source.pixel_spacing_mm, args.image_size)
        except (OSError, InvalidDicomError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        written = write_step_pngs(steps, args.out, path.stem)
        note = " (GrabCut kept nothing: rectangle used)" if steps.grabcut_fallback else ""
        print(
            f"{path}: frame {source.frame_number}, crop {steps.box.size} px{note} -> {len(written)} PNGs in {args.out}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
