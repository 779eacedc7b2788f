"""Renders the human-viewable picture of a result: the heatmap over the grey image, with the text burned in.

Called by write/sc.py; pure numpy/OpenCV, no DICOM here."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Text under ~13 px is unreadable on a PACS monitor, so small NM frames are scaled up until the text
# banner is at least this wide.
MIN_WIDTH_PX = 512
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MAX_BLEND = 0.6  # a fully hot pixel keeps 40 % of the grey anatomy underneath
_MARKER_RGB = (0, 255, 255)
# OpenCV's jet colour map with its entries already in RGB order (it writes BGR), as a user map for
# applyColorMap: a quarter of the time of mapping to BGR and converting each picture (0.09 against 0.35 ms
# for a 1024 x 256 view).
_JET_RGB = cv2.cvtColor(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
)


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    lines: Sequence[str],
    *,
    markers: Sequence[tuple[float, float]] = (),
) -> np.ndarray:
    """RGB uint8 picture: a text banner on top, then ``image`` with ``heatmap`` blended in colour.

    ``image`` and ``heatmap`` are float arrays (rows, cols) in 0..1 of the same shape. The picture is
    scaled by an integer factor (nearest neighbour for the image, so counts stay visibly pixelated) until it
    is at least MIN_WIDTH_PX wide. The text sits in its own black banner so it never hides anatomy.
    ``markers`` are (column, row) points in DICOM image coordinates of ``image`` ((0, 0) is the top-left
    corner of the top-left pixel, as in SR SCOORD), drawn as rings: the SR's hot spots.
    Where the heatmap is 0 the grey image is unchanged.
    """
    grey, heat = _checked(image, heatmap)
    if not lines:
        raise ValueError("an overlay needs at least one line of text (class, score, 'AI result, unverified')")
    picture = _blend(grey, heat, max(1, math.ceil(MIN_WIDTH_PX / grey.shape[1])), markers)
    return np.ascontiguousarray(np.concatenate([_banner(lines, picture.shape[1]), picture], axis=0))


@dataclass(frozen=True)
class PanelPicture:
    """One view of a several-view picture: grey image and heatmap (0..1, same shape), caption, hot spots."""

    image: np.ndarray
    heatmap: np.ndarray
    caption: str
    markers: Sequence[tuple[float, float]] = ()


def render_panels(panels: Sequence[PanelPicture], lines: Sequence[str]) -> np.ndarray:
    """RGB uint8 picture of several views (e.g. whole-body anterior and posterior) under one text banner.

    Each panel is drawn as in ``render_overlay``, with the same integer scale, its caption in a strip above
    it. Upright panels (taller than wide) sit side by side, lying ones one above the other, with a gap."""
    if not panels:
        raise ValueError("a several-view picture needs at least one panel")
    if not lines:
        raise ValueError("an overlay needs at least one line of text (class, score, 'AI result, unverified')")
    checked = [_checked(p.image, p.heatmap) for p in panels]
    upright = all(grey.shape[0] >= grey.shape[1] for grey, _ in checked)
    total_width = sum(g.shape[1] for g, _ in checked) if upright else max(g.shape[1] for g, _ in checked)
    scale = max(1, math.ceil(MIN_WIDTH_PX / total_width))
    drawn = [_blend(grey, heat, scale, p.markers) for (grey, heat), p in zip(checked, panels, strict=True)]
    captions = [_banner([p.caption], d.shape[1]) for p, d in zip(panels, drawn, strict=True)]
    gap = max(4, 4 * scale)
    heights = [c.shape[0] + d.shape[0] for c, d in zip(captions, drawn, strict=True)]
    widths = [d.shape[1] for d in drawn]
    if upright:  # side by side, tops aligned
        body_height, body_width = max(heights), sum(widths) + gap * (len(drawn) - 1)
    else:  # one above the other, left edges aligned
        body_height, body_width = sum(heights) + gap * (len(drawn) - 1), max(widths)
    top = _banner(lines, body_width)
    # one canvas, each part copied into place once: padding and concatenating copied every panel three times
    picture = np.zeros((top.shape[0] + body_height, body_width, 3), dtype=np.uint8)
    picture[: top.shape[0]] = top
    row, column = top.shape[0], 0
    for caption, part in zip(captions, drawn, strict=True):
        width = part.shape[1]
        picture[row : row + caption.shape[0], column : column + width] = caption
        picture[row + caption.shape[0] : row + caption.shape[0] + part.shape[0], column : column + width] = part
        if upright:
            column += width + gap
        else:
            row += caption.shape[0] + part.shape[0] + gap
    return picture


def _blend(grey: np.ndarray, heat: np.ndarray, scale: int, markers: Sequence[tuple[float, float]]) -> np.ndarray:
    """The grey image scaled by ``scale`` with the heatmap in colour and rings at the markers."""
    size = (grey.shape[1] * scale, grey.shape[0] * scale)
    grey_big, heat_big = grey, heat  # at scale 1 a resize would only copy
    if scale > 1:
        grey_big = cv2.resize(grey, size, interpolation=cv2.INTER_NEAREST)
        heat_big = np.clip(cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)

    base = cv2.cvtColor(cv2.convertScaleAbs(grey_big, alpha=255.0), cv2.COLOR_GRAY2RGB)
    colour = cv2.applyColorMap(cv2.convertScaleAbs(heat_big, alpha=255.0), _JET_RGB)
    # Per-pixel weights in one OpenCV pass: a quarter of the time of the same sum in float32 numpy, which
    # was most of a heatmap SC's build (7 ms of a 512 px picture). Weight 0 leaves the grey pixel as it was.
    alpha = np.float32(_MAX_BLEND) * heat_big
    picture = cv2.blendLinear(base, colour, np.float32(1.0) - alpha, alpha)

    for column, row in markers:
        centre = (round(column * scale), round(row * scale))
        cv2.circle(
            picture,
            centre,
            max(6, 3 * scale),
            _MARKER_RGB,
            thickness=max(1, scale // 2),
            lineType=cv2.LINE_AA,
        )
    return np.asarray(picture, dtype=np.uint8)


def _checked(image: np.ndarray, heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grey = np.asarray(image, dtype=np.float32)
    heat = np.asarray(heatmap, dtype=np.float32)
    if grey.ndim != 2 or 0 in grey.shape:
        raise ValueError(f"display image must be 2-D (rows, cols), got shape {grey.shape}")
    if heat.shape != grey.shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from display image shape {grey.shape}")
    return _unit_range(grey), _unit_range(heat)


def _unit_range(values: np.ndarray) -> np.ndarray:
    """``values`` clipped to 0..1, or themselves when already inside, as the networks hand them over. Checked
    by their minimum and maximum, which NaN and inf reach too: a quarter of the time of testing each value for
    finiteness and clipping a copy (0.07 against 0.28 ms for a 1024 x 256 view and its heatmap)."""
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("display image and heatmap must be finite (no NaN or inf)")
    return values if low >= 0.0 and high <= 1.0 else np.clip(values, 0.0, 1.0)


def _banner(lines: Sequence[str], width: int) -> np.ndarray:
    """Black strip with white text, wrapped to ``width``; Hershey fonts are ASCII, so text is folded."""
    font_scale = max(0.6, width / 850.0)
    thickness = max(1, round(font_scale * 1.6))
    margin = max(6, round(10 * font_scale))
    (_, glyph_height), baseline = cv2.getTextSize("Ag", _FONT, font_scale, thickness)
    line_height = glyph_height + baseline + max(4, round(6 * font_scale))
    wrapped = [part for line in lines for part in _wrap(_ascii(line), width - 2 * margin, font_scale, thickness)]
    banner = np.zeros((len(wrapped) * line_height + margin, width, 3), dtype=np.uint8)
    for index, text in enumerate(wrapped):
        origin = (margin, margin // 2 + (index + 1) * line_height - baseline)
        cv2.putText(banner, text, origin, _FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return banner


def _wrap(text: str, width: int, font_scale: float, thickness: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels. A line that fits whole is measured once: a text's width grows
    with every word added, so the greedy pass would keep it whole too (a measurement is ~10 µs a word)."""
    words = text.split()
    if not words:
        return [""]
    whole = " ".join(words)
    if cv2.getTextSize(whole, _FONT, font_scale, thickness)[0][0] <= width:
        return [whole]
    out = [words[0]]
    for word in words[1:]:
        candidate = f"{out[-1]} {word}"
        if cv2.getTextSize(candidate, _FONT, font_scale, thickness)[0][0] <= width:
            out[-1] = candidate
        else:
            out.append(word)
    return out


def _ascii(text: str) -> str:
    text = text.replace("\u2014", "-").replace("\u2013", "-").replace("\u2019", "'")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
