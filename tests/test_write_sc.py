"""Tests of the heatmap Secondary Capture writer and its overlay renderer on synthetic NM sources."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from scintnode.finding import Hotspot
from scintnode.write import SC_SERIES_NUMBER, build_heatmap_sc, overlay, render_overlay
from scintnode.write.overlay import MIN_WIDTH_PX
from scintnode.write.sc import overlay_lines
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean, dciodvfy_messages
from tests.test_nm_header import study, thyroid_source, whole_body_source
from tests.test_write_sr import hot_blob, retired_class_thyroid_source, round_trip, thyroid_finding

SCALE = MIN_WIDTH_PX // 128  # the 128x128 thyroid source is drawn 4x


@pytest.fixture(scope="module")
def source() -> Dataset:
    return thyroid_source()


@pytest.fixture(scope="module")
def sc(source: Dataset) -> Dataset:
    return round_trip(build_heatmap_sc(thyroid_finding([source]), [source], 0))


def test_sc_is_valid_apart_from_the_known_laterality_limitation(sc: Dataset) -> None:
    assert_dciodvfy_clean(sc, allowed_errors=[LATERALITY_2C_LIMITATION])
    assert LATERALITY_2C_LIMITATION in dciodvfy_messages(sc)  # still the validator, not us, if this changes


def test_sc_is_rgb_8_bit_burned_in_and_in_the_source_study(sc: Dataset, source: Dataset) -> None:
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert sc.pixel_array.dtype == np.uint8 and sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
    assert sc.Columns == 128 * SCALE and sc.Rows > 128 * SCALE  # scaled up, banner on top
    assert sc.BurnedInAnnotation == "YES"
    assert "PixelSpacing" not in sc
    assert list(sc.PatientOrientation) == ["L", "F"]
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert sc[keyword].value == source[keyword].value, keyword
    assert sc.SeriesNumber == SC_SERIES_NUMBER
    assert sc.SeriesDescription.startswith("AI heatmap (unverified")
    assert "synthetic" in sc.SeriesDescription
    assert "thyroid-resnet34 0.1.0" in sc.DerivationDescription and "Grad-CAM" in sc.DerivationDescription


def test_source_image_sequence_references_the_source_frame(sc: Dataset, source: Dataset) -> None:
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedFrameNumber == 1
    purpose = reference.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")


def test_overlay_changes_pixels_where_the_heatmap_is_hot_and_nowhere_else(source: Dataset) -> None:
    hot = build_heatmap_sc(thyroid_finding([source]), [source], 0).pixel_array.astype(int)
    cold = build_heatmap_sc(thyroid_finding([source], zero_heatmap=True), [source], 0).pixel_array.astype(int)
    assert hot.shape == cold.shape
    banner = hot.shape[0] - 128 * SCALE
    difference = np.abs(hot - cold).sum(axis=2)[banner:]
    heat = np.kron(hot_blob((128, 128), 50.5, 64.5), np.ones((SCALE, SCALE)))
    # 20 display pixels off the peak: clear of the hot-spot ring, still hot
    assert difference[64 * SCALE, 50 * SCALE + 20] > 100
    assert (difference[heat < 1e-4] == 0).all()
    assert np.array_equal(hot[:banner], cold[:banner])
    grey = cold[banner:]
    assert (grey[..., 0] == grey[..., 1]).mean() > 0.99  # a zero heatmap leaves the image grey


def test_text_names_class_score_and_caveats(source: Dataset) -> None:
    lines = overlay_lines(thyroid_finding([source]), frame=1)
    assert lines[0] == "Graves' disease: 81.2%"
    assert any("AI result, unverified" in line for line in lines)
    assert any("synthetic-trained model" in line for line in lines)
    assert not any("synthetic" in line for line in overlay_lines(thyroid_finding([source], synthetic=False), 1))
    sc = build_heatmap_sc(thyroid_finding([source]), [source], 0)
    banner = sc.pixel_array[: sc.Rows - 128 * SCALE]
    assert (banner == 255).all(axis=2).sum() > 500  # white text was drawn


def test_whole_body_posterior_frame_gets_its_own_orientation_and_frame_reference() -> None:
    wb = whole_body_source()
    finding = thyroid_finding([wb], frames=[2], hotspots=(Hotspot(0, 2, 50.5, 64.5, 0.9, "Grad-CAM peak"),))
    sc = round_trip(build_heatmap_sc(finding, [wb], 0))
    assert_dciodvfy_clean(sc, allowed_errors=[LATERALITY_2C_LIMITATION])
    assert list(sc.PatientOrientation) == ["R", "F"]
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 2
    assert sc.Columns >= MIN_WIDTH_PX


def test_sc_of_an_input_from_another_study_still_goes_into_the_first_source_study() -> None:
    current = thyroid_source(study("ACC-CURRENT"))
    earlier = thyroid_source(study("ACC-EARLIER"), views=("LAO",))
    sc = round_trip(build_heatmap_sc(thyroid_finding([current, earlier]), [current, earlier], 1))
    assert_dciodvfy_clean(sc, allowed_errors=[LATERALITY_2C_LIMITATION])
    assert sc.StudyInstanceUID == current.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    assert list(sc.PatientOrientation) == ["LP", "F"]


def test_bad_requests_get_a_clear_message(source: Dataset) -> None:
    finding = thyroid_finding([source])
    with pytest.raises(ValueError, match="source_index 1 is outside"):
        build_heatmap_sc(finding, [source], 1)
    with pytest.raises(ValueError, match="heatmap shape"):
        render_overlay(np.zeros((8, 8)), np.zeros((8, 9)), ["x"])
    with pytest.raises(ValueError, match="at least one line"):
        render_overlay(np.zeros((8, 8)), np.zeros((8, 8)), [])


def test_render_overlay_scales_small_images_and_survives_non_ascii_text() -> None:
    picture = render_overlay(np.full((64, 32), 0.5), np.zeros((64, 32)), ["Basedow\u2019s disease \u2014 92 %"])
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] == MIN_WIDTH_PX and picture.shape[0] > 64 * MIN_WIDTH_PX // 32
    body = picture[-64 * MIN_WIDTH_PX // 32 :]
    assert (body == 128).all()  # no heat: the grey image (0.5 of full scale) exactly as it was


def test_a_fully_hot_pixel_keeps_forty_percent_of_the_grey_under_the_colour() -> None:
    black = render_overlay(np.zeros((16, 16)), np.ones((16, 16)), ["x"])[-16 * 32 :]
    white = render_overlay(np.ones((16, 16)), np.ones((16, 16)), ["x"])[-16 * 32 :]
    # the hottest jet colour is RGB (128, 0, 0); 60 % of it over black, and over white 40 % of 255 added
    assert (black == (77, 0, 0)).all()
    assert (white == (179, 102, 102)).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["image", "heatmap"])
def test_a_value_that_is_not_finite_is_refused(bad: float, where: str) -> None:
    image, heat = np.full((16, 16), 0.5), np.full((16, 16), 0.5)
    (image if where == "image" else heat)[3, 4] = bad
    with pytest.raises(ValueError, match="finite"):
        render_overlay(image, heat, ["x"])


def test_values_outside_zero_to_one_are_drawn_as_the_nearest_end() -> None:
    wild = render_overlay(np.array([[-3.0, 7.0]] * 8), np.array([[-1.0, 2.0]] * 8), ["x"])
    tame = render_overlay(np.array([[0.0, 1.0]] * 8), np.array([[0.0, 1.0]] * 8), ["x"])
    assert np.array_equal(wild, tame)


def test_each_heat_level_gets_its_jet_colour_in_rgb_order() -> None:
    levels = np.arange(256, dtype=np.float32) / 255.0
    heat = np.tile(np.repeat(levels, 2), (4, 1))  # 4 x 512: wide enough to be drawn unscaled
    drawn = render_overlay(np.zeros_like(heat), heat, ["x"])[-4:].astype(float)
    jet_bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)[:, 0]
    expected = jet_bgr[:, ::-1] * (0.6 * levels)[:, None]  # over black: 60 % of the colour at full heat
    assert np.abs(drawn - np.repeat(expected, 2, axis=0)[None]).max() <= 1.0


def test_a_source_of_the_retired_nm_sop_class_gets_a_valid_heatmap() -> None:
    """NM Image Storage (Retired) is not a multi-frame class to dciodvfy: its reference names no frame."""
    retired = retired_class_thyroid_source()
    sc = round_trip(build_heatmap_sc(thyroid_finding([retired]), [retired], 0))
    assert_dciodvfy_clean(sc, allowed_errors=[LATERALITY_2C_LIMITATION])
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPClassUID == retired.SOPClassUID and "ReferencedFrameNumber" not in reference


def _greedy_wrap(text: str, width: int, font_scale: float, thickness: int) -> list[str]:
    """Word by word, each candidate measured: what `_wrap` must give, with or without its one-measurement path."""
    words = text.split() or [""]
    out = [words[0]]
    for word in words[1:]:
        candidate = f"{out[-1]} {word}"
        if cv2.getTextSize(candidate, overlay._FONT, font_scale, thickness)[0][0] <= width:
            out[-1] = candidate
        else:
            out.append(word)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.sampled_from("abcdefghij WXYZ%.,-:0123456789"), max_size=90),
    st.integers(40, 1100),
    st.sampled_from([0.6, 0.75, 1.2, 2.4]),
)
def test_banner_lines_wrap_as_the_word_by_word_wrap_does(text: str, width: int, font_scale: float) -> None:
    thickness = max(1, round(font_scale * 1.6))
    assert overlay._wrap(text, width, font_scale, thickness) == _greedy_wrap(text, width, font_scale, thickness)


def _banner_height(lines: list[str], width: int) -> int:
    return int(overlay._banner(lines, width).shape[0])


@pytest.mark.parametrize("upright", [True, False])
def test_panels_are_laid_out_under_the_banner_with_captions_and_black_gaps(upright: bool) -> None:
    """Views of flat grey 0.25 and 0.75 without heat: each appears unchanged, under its caption, in its place;
    the shorter view is padded with black, and a black gap separates the views."""
    first_shape, second_shape = ((600, 256), (500, 256)) if upright else ((256, 600), (256, 500))
    first = overlay.PanelPicture(np.full(first_shape, 0.25, np.float32), np.zeros(first_shape, np.float32), "Anterior")
    second = overlay.PanelPicture(np.full(second_shape, 0.75, np.float32), np.zeros(second_shape, np.float32), "B")
    lines = ["Normal: 90.0%", "AI result, unverified"]
    picture = overlay.render_panels([first, second], lines)
    gap = 4  # the views are at least 512 px across together: scale 1
    width = 256 + gap + 256 if upright else 600
    top = _banner_height(lines, width)
    assert picture.shape[1] == width and picture.dtype == np.uint8
    assert picture[:top].any()  # the banner's text
    grey = {64: 0.25, 191: 0.75}  # convertScaleAbs rounds 255 * value
    places = []
    row, column = top, 0
    for panel in (first, second):
        caption = _banner_height([panel.caption], panel.image.shape[1])
        rows, columns = panel.image.shape
        assert picture[row : row + caption, column : column + columns].any()  # the caption's text
        view = picture[row + caption : row + caption + rows, column : column + columns]
        places.append(view)
        assert (view == next(v for v, g in grey.items() if g == panel.image[0, 0])).all()
        if upright:
            below = picture[row + caption + rows :, column : column + columns]
            assert not below.any()  # padded with black down to the taller view
            column += columns + gap
        else:
            row += caption + rows + gap
    if upright:
        assert not picture[top:, 256 : 256 + gap].any()
        assert picture.shape[0] == top + _banner_height(["Anterior"], 256) + 600
    else:
        between = top + _banner_height(["Anterior"], 600) + 256
        assert not picture[between : between + gap].any()
        assert not picture[between + gap + _banner_height(["B"], 500) :, 500:].any()  # right of the narrower view
        assert picture.shape[0] == between + gap + _banner_height(["B"], 500) + 256
