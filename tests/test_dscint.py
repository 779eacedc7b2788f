"""Dscint (paper 003): Table 4 layer by layer, the attention module, every input layout a camera sends (one
2-frame object, two objects, one view mirrored, lying storage, SC with Modality NM, signed and compressed
pixels), the two-view heatmap SC, and a synthetic sanity check of the committed weights."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid
from torch import nn

from scintnode.cam import ClassActivationMap
from scintnode.models import dscint as net
from scintnode.models.nm_input import ImageNotUsable, decode_frames, read_planar_frames
from scintnode.phantoms import bone as phantoms
from scintnode.phantoms import nm
from scintnode.write.sc import build_heatmap_sc
from scintnode.write.sr import build_report
from tests.dicom_validation import LATERALITY_2C_LIMITATION, assert_dciodvfy_clean

# Paper 003 Table 4 for one 1024 x 256 view (N = 1): (module, output shape after it).
LAYER_TABLE: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1", (1, 16, 255, 63)),  # 11x11, 16, stride 4, padding 2
    ("pool1", (1, 16, 127, 31)),  # max-pool 3, stride 2
    ("attention", (1, 16, 127, 31)),  # hybrid channel + spatial attention
    ("conv2", (1, 16, 127, 31)),  # 5x5, 16, stride 1, padding 2
    ("bn2", (1, 16, 127, 31)),
    ("pool2", (1, 16, 63, 15)),  # max-pool 3, stride 2
    ("conv3", (1, 24, 63, 15)),  # 3x3, 24, stride 1, padding 1
    ("conv4", (1, 24, 63, 15)),
    ("conv5", (1, 24, 63, 15)),
    ("bn5", (1, 24, 63, 15)),
    ("pool3", (1, 24, 61, 13)),  # max-pool 3, stride 1
    ("classifier.1", (1, 1024)),  # fully connected 1024 (from 24 * 61 * 13 = 19032)
    ("classifier.4", (1, 1024)),  # fully connected 1024
    ("classifier.6", (1, 4)),  # softmax over 4 classes
)
SMALL = (256, 64)  # a quarter-size input keeps plumbing tests fast; layer shapes are checked at full size


def whole_body(
    frames: np.ndarray,
    views: tuple[str, ...] = ("anterior", "posterior"),
    *,
    agent: str = "medronate",
    coding: nm.Coding = "SCT",
    placement: nm.ViewPlacement = "detector",
    description: str = "WB BONE (synthetic)",
) -> Dataset:
    start = datetime(2024, 6, 3, 9, 0)
    return nm.build_nm_image(
        frames.astype(np.uint16),
        patient=nm.Patient("SYNWBTEST", "SYNTHETIC^WB^TEST", date(1960, 1, 1), "M"),
        study=nm.StudyInfo(generate_uid(), start, accession="SYNWBTEST", description="NM bone (synthetic)"),
        series_uid=generate_uid(),
        series_number=1,
        series_description=description,
        agent=agent,
        image_type="WHOLE BODY",
        views=views,
        acquired=start + timedelta(hours=3),
        injected=start,
        pixel_spacing_mm=(phantoms.PIXEL_MM, phantoms.PIXEL_MM),
        body_part="WHOLEBODY",
        scan_velocity_mm_s=3.0,
        coding=coding,
        view_placement=placement,
    )


@pytest.fixture(scope="module")
def phantom() -> phantoms.BonePhantom:
    return phantoms.synthesize("metastasis", np.random.default_rng(11))


@pytest.fixture(scope="module")
def pair(phantom: phantoms.BonePhantom) -> np.ndarray:
    return np.stack([phantom.anterior, phantom.posterior])


@pytest.fixture(scope="module")
def small_network(tmp_path_factory: pytest.TempPathFactory) -> net.DscintNetwork:
    """An untrained network on a quarter-size input, in the committed file format."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "dscint.pt"
    net.save_weights(net.Dscint(input_shape=SMALL), path, {"version": "test", "synthetic": True})
    return net.load_dscint_network(path)


def test_layers_follow_table_4() -> None:
    model = net.Dscint().eval()
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, _ in LAYER_TABLE
    ]
    with torch.no_grad():
        probs = net.probabilities(model(torch.rand(1, 1, 1024, 256)))
    for handle in handles:
        handle.remove()
    assert [(name, shapes[name]) for name, _ in LAYER_TABLE] == list(LAYER_TABLE)
    assert net.flat_features() == 24 * 61 * 13
    convs = [(m.kernel_size, m.out_channels, m.stride, m.padding) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c for c in convs if c[0][0] > 1 and c[1] > 1] == [
        ((11, 11), 16, (4, 4), (2, 2)),
        ((5, 5), 16, (1, 1), (2, 2)),
        ((3, 3), 24, (1, 1), (1, 1)),
        ((3, 3), 24, (1, 1), (1, 1)),
        ((3, 3), 24, (1, 1), (1, 1)),
    ]
    assert probs.shape == (1, 4) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert net.CLASS_KEYS == ("normal", "metastasis", "arthritis", "thyroid_carcinoma")


def test_attention_weights_have_the_papers_shapes() -> None:
    attention = net.HybridAttention(16)
    x = torch.rand(2, 16, 20, 8)
    with torch.no_grad():
        channel = attention.channel(x)
        spatial = attention.spatial(channel * x)
        combined = attention(x)
    assert channel.shape == (2, 16, 1, 1) and spatial.shape == (2, 1, 20, 8)
    assert float(channel.min()) > 0 and float(channel.max()) < 1 and float(spatial.min()) > 0
    assert torch.allclose(combined, spatial * channel * x)
    # one MLP shared by the average- and max-pooled descriptors (eq. 3), a k x k conv over 2 maps (eq. 4)
    assert [type(m) for m in attention.channel.mlp] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert attention.spatial.conv.in_channels == 2 and attention.spatial.conv.kernel_size == (7, 7)


def test_two_frame_object_gives_both_views(pair: np.ndarray) -> None:
    passes = net.view_passes([whole_body(pair)])
    assert [(p.view, p.frame.frame_number, p.mirrored) for p in passes] == [
        ("anterior", 1, False),
        ("posterior", 2, False),
    ]
    assert passes[0].image.shape == net.INPUT_SHAPE and passes[0].image.dtype == np.float32
    assert np.array_equal(passes[1].image, net.network_image(pair[1].astype(np.float32)))


def test_views_come_from_codes_in_any_order_then_from_text(pair: np.ndarray) -> None:
    reversed_pair = whole_body(pair[::-1], ("posterior", "anterior"), coding="SRT")
    passes = net.view_passes([reversed_pair])
    assert [(p.view, p.frame.frame_number) for p in passes] == [("anterior", 2), ("posterior", 1)]
    text_only = whole_body(pair[::-1], coding="none", placement="none", description="WB POST/ANT")
    frames = read_planar_frames(text_only)
    assert [(f.view, f.view_from) for f in frames] == [
        ("posterior", "SeriesDescription names the views in frame order"),
        ("anterior", "SeriesDescription names the views in frame order"),
    ]
    nothing = whole_body(pair, coding="none", placement="none", description="WB BONE")
    assert [p.frame.frame_number for p in net.view_passes([nothing])] == [1, 2]  # frame 1 anterior by convention


def test_two_objects_are_paired_by_view(pair: np.ndarray) -> None:
    posterior = whole_body(pair[1:], ("posterior",), placement="top-level")
    anterior = whole_body(pair[:1], ("anterior",))
    passes = net.view_passes([posterior, anterior])
    assert [(p.view, p.frame.source_index, p.mirrored) for p in passes] == [
        ("anterior", 1, False),
        ("posterior", 0, False),
    ]


def test_an_episodes_slot_names_the_view_a_source_does_not(pair: np.ndarray) -> None:
    silent = [whole_body(pair[i : i + 1], ("anterior",), placement="none", description="WB") for i in (1, 0)]
    passes = net.view_passes(silent, hints=("posterior", "anterior"))
    assert [(p.view, p.frame.source_index, p.frame.view_from, p.mirrored) for p in passes] == [
        ("anterior", 1, "episode slot", False),
        ("posterior", 0, "episode slot", False),
    ]


def test_one_view_is_mirrored_to_stand_in_for_the_other(pair: np.ndarray) -> None:
    passes = net.view_passes([whole_body(pair[1:], ("posterior",))])
    assert [(p.view, p.mirrored) for p in passes] == [("posterior", False), ("anterior", True)]
    assert np.array_equal(passes[1].image, passes[0].image[:, ::-1])


def test_lying_storage_is_turned_upright(pair: np.ndarray) -> None:
    upright = net.view_passes([whole_body(pair)])
    lying = whole_body(np.ascontiguousarray(pair.transpose(0, 2, 1)))  # 256 rows x 1024 columns, head on the left
    lying.PatientOrientation = ["F", "L"]
    assert (lying.Rows, lying.Columns) == (256, 1024)
    turned = net.view_passes([lying])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(upright, turned, strict=True))
    del lying.PatientOrientation  # no orientation: lying frames are taken head-left
    assert np.array_equal(net.view_passes([lying])[0].image, upright[0].image)
    head_right = whole_body(np.ascontiguousarray(pair.transpose(0, 2, 1)[:, :, ::-1]))
    head_right.PatientOrientation = ["H", "L"]
    assert np.array_equal(net.view_passes([head_right])[0].image, upright[0].image)


def test_secondary_capture_with_modality_nm_and_signed_pixels(pair: np.ndarray) -> None:
    sc = Dataset()
    sc.file_meta = FileMetaDataset()
    sc.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sc.SOPClassUID = SecondaryCaptureImageStorage
    sc.SOPInstanceUID = generate_uid()
    sc.Modality = "NM"
    sc.SeriesDescription = "WB BONE ANT"
    sc.SamplesPerPixel, sc.PhotometricInterpretation = 1, "MONOCHROME2"
    sc.Rows, sc.Columns = pair.shape[1:]
    sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 16, 16, 15, 1
    sc.PixelData = pair[0].astype("<i2").tobytes()
    (frame,) = read_planar_frames(sc)
    assert (frame.view, frame.view_from.split(":")[0]) == ("anterior", "text")
    assert np.array_equal(frame.pixels, pair[0].astype(np.float32))
    passes = net.view_passes([sc])
    assert [(p.view, p.mirrored) for p in passes] == [("anterior", False), ("posterior", True)]
    sc.RescaleSlope, sc.RescaleIntercept = 2, 0  # signed stored values with a Modality LUT
    assert np.array_equal(decode_frames(sc)[0], 2 * pair[0].astype(np.float32))


def _compress(tool: str, arguments: list[str], source: Path, target: Path) -> Dataset:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} (DCMTK) is not installed")
    subprocess.run([tool, *arguments, str(source), str(target)], check=True, capture_output=True)
    return dcmread(target)


@pytest.mark.parametrize(
    ("tool", "arguments", "syntax"),
    [
        ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70"),  # JPEG lossless, first-order prediction
        ("dcmcjpls", ["+el"], "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        ("dcmcrle", [], "1.2.840.10008.1.2.5"),  # RLE lossless
        ("pydicom", [], JPEG2000Lossless),
    ],
)
def test_compressed_pixels_decode_to_the_same_counts(
    tmp_path: Path, pair: np.ndarray, tool: str, arguments: list[str], syntax: str
) -> None:
    original = nm.save(whole_body(pair), tmp_path / "plain.dcm")
    if tool == "pydicom":
        ds = dcmread(original)
        ds.compress(JPEG2000Lossless)
        ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
        compressed = dcmread(tmp_path / "j2k.dcm")
    else:
        compressed = _compress(tool, arguments, original, tmp_path / "compressed.dcm")
    assert compressed.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(decode_frames(compressed), pair.astype(np.float32))


def test_bad_input_says_what_is_wrong(pair: np.ndarray) -> None:
    with pytest.raises(ImageNotUsable, match="no sources"):
        net.view_passes([])
    lateral = whole_body(pair[:1], ("left lateral",))
    with pytest.raises(ImageNotUsable, match="anterior or posterior"):
        net.view_passes([lateral])
    broken = whole_body(pair)
    broken.PixelData = b"\x00\x01"
    with pytest.raises(ImageNotUsable, match="cannot decode"):
        net.view_passes([broken])


def test_run_gives_one_finding_with_a_panel_per_view(small_network: net.DscintNetwork, pair: np.ndarray) -> None:
    ds = whole_body(pair)
    finding = small_network.run([ds])
    assert small_network.spec.name == "dscint" and small_network.spec.trained_on_synthetic
    assert set(finding.probabilities) == set(net.CLASS_KEYS)
    assert sum(finding.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert [(p.source_index, p.frame, p.caption) for p in finding.panels] == [(0, 1, "Anterior"), (0, 2, "Posterior")]
    for panel in finding.panels:
        assert panel.display.shape == panel.heatmap.shape == pair.shape[1:]
        assert float(panel.heatmap.min()) >= 0.0 and float(panel.heatmap.max()) <= 1.0
    assert finding.source_frames == (1,) and len(finding.heatmaps) == 1
    assert sum(len(m._forward_hooks) for m in small_network.model.modules()) == 0
    assert finding.inference_ms > 0 and finding.explain_ms > 0  # the forward pass and Grad-CAM, timed apart
    mirrored = small_network.run([whole_body(pair[:1], ("anterior",))])
    assert [p.caption for p in mirrored.panels] == ["Anterior (posterior missing: mirrored for the network)"]


def test_two_view_sc_shows_both_views_and_validates(small_network: net.DscintNetwork, pair: np.ndarray) -> None:
    ds = whole_body(pair)
    finding = small_network.run([ds])
    sc = build_heatmap_sc(finding, [ds], 0)
    gap = 4
    assert sc.Columns == 2 * pair.shape[2] + gap and sc.Rows > pair.shape[1]
    assert list(sc.SourceImageSequence[0].ReferencedFrameNumber) == [1, 2]
    assert not sc.PatientOrientation  # anterior runs to the left, posterior to the right: no single value
    assert "frames 1, 2" in sc.DerivationDescription
    picture = sc.pixel_array
    separator = picture[-pair.shape[1] :, pair.shape[2] : pair.shape[2] + gap]
    assert not separator.any()  # the black gap between the two views
    assert_dciodvfy_clean(sc, allowed_errors=[LATERALITY_2C_LIMITATION])
    assert_dciodvfy_clean(build_report(finding, [ds]))


def _back_propagated(model: net.Dscint, x: torch.Tensor, class_index: int) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM on relu5 by autograd (the oracle), with the logits of its pass."""
    with ClassActivationMap(model, net.CAM_LAYER) as cam:
        logits = cam.forward(x)
        return cam.explain(class_index).maps, logits


def _mean_gradients(model: net.Dscint, x: torch.Tensor, class_index: int) -> torch.Tensor:
    """Grad-CAM's channel weights by autograd: d logit / d relu5, averaged over each channel's positions."""
    activation = model.last_activation(x).detach().requires_grad_(True)
    logits = model.classifier(torch.flatten(model.pool3(activation), 1))
    (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), activation)
    return gradient.mean(dim=(2, 3))


def _inputs(pair: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    views = np.stack([net.network_image(view, shape) for view in pair])
    return net.to_network_input(views)


@pytest.fixture(scope="module")
def committed() -> net.DscintNetwork:
    return net.load_dscint_network()


@pytest.mark.parametrize("weights", ["untrained quarter size", "committed"])
def test_grad_cam_from_the_forward_pass_equals_back_propagation(
    weights: str, pair: np.ndarray, committed: net.DscintNetwork
) -> None:
    if weights == "committed":
        model = committed.model
    else:
        torch.manual_seed(3)
        model = net.Dscint(input_shape=SMALL).eval()
    x = _inputs(pair, model.input_shape)
    noise = torch.rand((1, 1, *model.input_shape), generator=torch.Generator().manual_seed(5))
    explainer = net.HeadGradCam(model)
    for batch in (x, noise):
        with torch.inference_mode():
            forward = model.forward_for_cam(batch)
        for class_index in range(len(net.LABELS)):
            expected_weights = _mean_gradients(model, batch, class_index)
            weights_now = explainer.channel_weights(forward, class_index)
            assert float(expected_weights.abs().max()) > 0
            torch.testing.assert_close(
                weights_now, expected_weights, rtol=1e-4, atol=1e-4 * float(expected_weights.abs().max())
            )
            expected, logits = _back_propagated(model, batch, class_index)
            torch.testing.assert_close(forward.logits, logits, rtol=1e-5, atol=1e-5)
            ours = explainer.maps(forward, class_index)
            assert ours.shape == expected.shape == (batch.shape[0], *forward.activation.shape[2:])
            np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * max(float(expected.max()), 1e-3))


def test_the_network_reports_the_back_propagated_map(committed: net.DscintNetwork, pair: np.ndarray) -> None:
    """What a job shows is Grad-CAM as autograd computes it, scaled over both views, on each stored frame."""
    ds = whole_body(pair)
    finding = committed.run([ds])
    model = committed.model
    predicted = net.CLASS_KEYS.index(finding.predicted)
    expected, _ = _back_propagated(model, _inputs(pair, model.input_shape), predicted)
    frames = net.read_planar_frames(ds, 0)
    on_frames = [net._to_frame(cam_map, frame) for cam_map, frame in zip(expected, frames, strict=True)]
    peak = max(float(m.max()) for m in on_frames)
    assert peak > 0
    for panel, cam_map in zip(finding.panels, on_frames, strict=True):
        np.testing.assert_allclose(panel.heatmap, cam_map / peak, atol=1e-4)


def test_a_view_is_shown_as_its_counts_scaled_whatever_size_the_network_takes(pair: np.ndarray) -> None:
    lying = whole_body(np.ascontiguousarray(pair.transpose(0, 2, 1)[:, :, ::-1]))  # head on the right
    lying.PatientOrientation = ["H", "L"]
    for ds in (whole_body(pair), lying):
        frames = net.read_planar_frames(ds, 0)
        for shape in (net.INPUT_SHAPE, SMALL):
            passes = net.view_passes([ds], shape)
            for view_pass, frame in zip(passes, frames, strict=True):
                assert np.array_equal(net._display(view_pass), net.scale_counts(frame.pixels))
    # Counts below 0 (a signed secondary capture) are clipped before the network, which can move the percentile:
    # here 0 lies between the two counts it interpolates, so only the frame itself gives the display.
    frame = net.read_planar_frames(whole_body(pair), 0)[0]
    counts = np.arange(frame.pixels.size, dtype=np.float32)
    counts -= np.float32(int(net.INTENSITY_PERCENTILE / 100 * (counts.size - 1)) + 0.5)
    signed = replace(frame, pixels=np.random.default_rng(2).permutation(counts).reshape(frame.pixels.shape))
    (view_pass,) = [p for p in net.view_passes([whole_body(pair)]) if p.view == "anterior"]
    view_pass = replace(view_pass, frame=signed, image=net.network_image(signed.upright.apply(signed.pixels)))
    assert not np.array_equal(signed.upright.invert(view_pass.image), net.scale_counts(signed.pixels))
    assert np.array_equal(net._display(view_pass), net.scale_counts(signed.pixels))


def test_a_study_stored_lying_gets_the_upright_studys_panels_turned(
    committed: net.DscintNetwork, pair: np.ndarray
) -> None:
    upright = committed.run([whole_body(pair)])
    lying = whole_body(np.ascontiguousarray(pair.transpose(0, 2, 1)[:, :, ::-1]))  # head on the right
    lying.PatientOrientation = ["H", "L"]
    turned = committed.run([lying])
    assert turned.probabilities == upright.probabilities
    for ours, theirs in zip(turned.panels, upright.panels, strict=True):
        assert ours.display.shape == ours.heatmap.shape == (256, 1024)
        assert np.array_equal(ours.display, theirs.display.T[:, ::-1])
        np.testing.assert_allclose(ours.heatmap, theirs.heatmap.T[:, ::-1], atol=1e-6)


def test_committed_weights_classify_fresh_synthetic_phantoms() -> None:
    """Synthetic sanity check only (not clinical accuracy): a seed the weights never saw, 3 studies per class."""
    network = net.load_dscint_network()
    samples = phantoms.generate(3, seed=515151)
    right = sum(network.run([whole_body(np.stack([p.anterior, p.posterior]))]).predicted == p.label for p in samples)
    assert right / len(samples) > 0.25 + 0.15  # chance is 0.25 with four balanced classes


@given(
    arrays(np.float64, st.integers(1, 400), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    st.floats(0.0, 100.0),
)
@settings(max_examples=300, deadline=None)
def test_high_percentile_is_numpys_linear_percentile(values: np.ndarray, q: float) -> None:
    assert net.high_percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_high_percentile_of_a_whole_body_view_in_float32() -> None:
    view = np.random.default_rng(4).poisson(8, (1024, 256)).astype(np.float32)
    for q in (50.0, 99.5, 100.0):
        assert net.high_percentile(view, q) == pytest.approx(float(np.percentile(view, q)), rel=1e-6)
