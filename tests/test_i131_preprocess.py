"""Paper 004 §2.2 preprocessing, step by step, on synthetic inputs: the crop finds the thyroid bed, equalisation
spreads the grey levels, GrabCut keeps the bed and removes far background, and the network input is standardised."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.uid import generate_uid

from scintnode.models import i131_neck_preprocess as pp
from scintnode.models.planar import IMAGENET_MEAN, IMAGENET_STD, ImageNotUsable
from scintnode.phantoms import i131_neck as phantoms
from scintnode.phantoms import nm


def neck_with_focus(focus_counts: float = 300.0) -> tuple[np.ndarray, tuple[int, int]]:
    """A 256 x 256 neck of Poisson soft tissue on an off-centre body, with one focus planted in the bed."""
    rng = np.random.default_rng(7)
    activity = np.zeros((256, 256), dtype=np.float32)
    activity[:, 70:200] = 3.0  # body, midline at column 134.5
    bed = (128, 134)
    cv2.circle(activity, (bed[1], bed[0]), 4, focus_counts, -1)
    activity = cv2.GaussianBlur(activity, (0, 0), 2.5)
    return rng.poisson(activity).astype(np.float32), bed


def test_crop_is_centred_on_the_neck_midline_and_sized_in_millimetres() -> None:
    counts, bed = neck_with_focus()
    row, column = pp.locate_thyroid_bed(counts, 2.0)
    assert row == pytest.approx(127.5)
    assert column == pytest.approx(134.5, abs=3)
    box = pp.crop_box(counts, 2.0)
    assert box.size == 80  # 160 mm at 2 mm per pixel
    assert box.top <= bed[0] < box.top + box.size and box.left <= bed[1] < box.left + box.size
    assert pp.crop_box(counts, None).size == round(pp.FIELD_FRACTION * 256)


def test_crop_contains_the_bed_of_every_synthetic_phantom() -> None:
    for phantom in phantoms.generate(12, seed=11):
        box = pp.crop_box(phantom.counts[0].astype(np.float32), phantom.pixel_spacing_mm)
        column, row = phantom.bed_centre
        margin = 30.0 / phantom.pixel_spacing_mm  # the bed reaches 28 mm above its centre
        assert box.top + margin <= row <= box.top + box.size - margin
        assert box.left + margin <= column <= box.left + box.size - margin


def test_windowing_and_histogram_equalisation() -> None:
    crop = np.linspace(100.0, 110.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    windowed = pp.window_to_uint8(crop)
    assert windowed.dtype == np.uint8 and (windowed.min(), windowed.max()) == (0, 255)
    assert not pp.window_to_uint8(np.full((8, 8), 5.0)).any()
    narrow = np.clip(np.round(crop - 100.0), 0, 255).astype(np.uint8)  # 11 grey levels at the dark end
    equalised = pp.equalise(narrow)
    assert equalised.max() == 255 and equalised.min() == 0
    # monotone: a brighter input never becomes darker
    order = np.argsort(narrow.ravel(), kind="stable")
    assert np.all(np.diff(equalised.ravel()[order].astype(int)) >= 0)
    # about the same number of pixels per occupied level band
    counts = np.histogram(equalised, bins=4, range=(0, 256))[0]
    assert counts.min() > 0.5 * counts.max()


def test_grabcut_keeps_the_bed_and_removes_far_background() -> None:
    image = np.full((80, 80), 30, dtype=np.uint8)
    cv2.circle(image, (40, 40), 9, 220, -1)  # the bed, inside the rectangle
    cv2.circle(image, (4, 4), 3, 220, -1)  # a hot spot far outside it
    mask, fallback = pp.grabcut(image)
    assert not fallback
    assert mask[40, 40] and mask[35:46, 35:46].mean() > 0.9
    assert not mask[4, 4] and not mask[:10, :].any()
    assert mask.sum() < 0.2 * mask.size


def test_grabcut_falls_back_to_its_rectangle_when_nothing_stands_out() -> None:
    mask, fallback = pp.grabcut(np.full((40, 40), 128, dtype=np.uint8))
    assert fallback
    assert mask[20, 20] and not mask[0, 0] and mask.sum() == 28 * 28
    with pytest.raises(ValueError, match="uint8"):
        pp.grabcut(np.zeros((4, 4), dtype=np.float32))


def test_grabcut_is_deterministic() -> None:
    image = np.random.default_rng(3).integers(0, 60, (64, 64)).astype(np.uint8)
    cv2.circle(image, (30, 34), 7, 240, -1)
    first, _ = pp.grabcut(image)
    second, _ = pp.grabcut(image)
    assert np.array_equal(first, second)


def test_preprocess_keeps_a_planted_focus_and_blanks_the_far_background() -> None:
    counts, bed = neck_with_focus()
    steps = pp.preprocess(counts, (2.0, 2.0), image_size=64)
    r, c = bed[0] - steps.box.top, bed[1] - steps.box.left
    assert steps.crop.shape == steps.equalised.shape == steps.grabcut_mask.shape == (80, 80)
    assert steps.equalised[r, c] >= 250  # the focus is the brightest thing in the crop
    assert steps.grabcut_mask[r, c] and steps.segmented[r, c, 0] >= 250
    edge = np.ones((80, 80), dtype=bool)
    edge[8:72, 8:72] = False  # well outside the GrabCut rectangle (its margin is 12 pixels)
    assert not steps.segmented[edge].any()
    assert steps.resized.shape == (64, 64, 3) and steps.resized.dtype == np.uint8
    assert steps.display.shape == (256, 256)
    expected = (steps.resized[:, :, ::-1] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert steps.standardised.shape == (3, 64, 64) and steps.standardised.dtype == np.float32
    np.testing.assert_allclose(steps.standardised, expected.transpose(2, 0, 1), atol=1e-5)


def test_preprocess_refuses_bad_frames() -> None:
    with pytest.raises(ImageNotUsable, match="2-D frame"):
        pp.preprocess(np.zeros((3, 64, 64)), None)
    with pytest.raises(ImageNotUsable, match="NaN"):
        pp.preprocess(np.full((64, 64), np.nan), None)


def test_every_step_is_written_as_png(tmp_path: Path) -> None:
    phantom = phantoms.synthesize("residual", np.random.default_rng(5))
    start = datetime(2024, 2, 5, 9, 0)
    ds = nm.build_nm_image(
        phantom.counts,
        patient=nm.Patient("SYNPP01", "SYNTHETIC^PP", date(1980, 1, 1), "F"),
        study=nm.StudyInfo(generate_uid(), start, accession="SYNPP01", description="NM I-131 neck (synthetic)"),
        series_uid=generate_uid(),
        series_number=1,
        series_description="I-131 NECK (synthetic)",
        agent="i131-iodide",
        views=("anterior", "posterior"),
        acquired=start + timedelta(minutes=10),
        pixel_spacing_mm=(phantom.pixel_spacing_mm,) * 2,
    )
    source = nm.save(ds, tmp_path / "neck.dcm")
    assert pp.main([str(source), "--out", str(tmp_path / "steps"), "--image-size", "64"]) == 0
    names = sorted(p.name for p in (tmp_path / "steps").glob("*.png"))
    assert names == [
        "neck_0_source.png",
        "neck_1_crop.png",
        "neck_2_equalised.png",
        "neck_3_grabcut_mask.png",
        "neck_4_segmented.png",
        "neck_5_resized.png",
        "neck_6_standardised.png",
    ]
    resized = cv2.imread(str(tmp_path / "steps" / "neck_5_resized.png"))
    assert resized is not None and resized.shape == (64, 64, 3)
    (tmp_path / "broken.dcm").write_bytes(b"not dicom")
    assert pp.main([str(tmp_path / "broken.dcm"), "--out", str(tmp_path / "steps")]) == 1
