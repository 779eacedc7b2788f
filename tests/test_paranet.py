"""ParaNet (paper 000): architecture facts, preprocessing of single- and multi-frame NM, localisation, the SR.

Shapes of the paper's variant are checked on torch's meta device (no memory, no compute); the localisation
check runs the committed small weights on synthetic studies (a sanity check, not an accuracy claim)."""

from __future__ import annotations

import datetime as dt
import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from scintnode.finding import Finding
from scintnode.models import paranet as net
from scintnode.models import paranet_glands as glands
from scintnode.models.paranet_input import (
    IDENTITY,
    INPUT_CEILING,
    anterior_frame,
    neck_box,
    prepare_counts,
    prepare_source,
    register,
    remove_artefacts,
    warp_point,
)
from scintnode.models.vgg import load_torchvision_features, vgg_features
from scintnode.phantoms import nm
from scintnode.phantoms.parathyroid import generate, write_studies
from scintnode.write.sr import build_report
from tests.dicom_validation import assert_dciodvfy_clean, assert_dsrdump_parses

# torchvision vgg19().features: conv layers sit at these indices (ReLU and max-pool take the others).
TORCHVISION_VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_paper_variant_path_reduces_350_to_21x21x512_and_head_is_750_256_2() -> None:
    with torch.device("meta"):
        model = net.build("paranet")
        path_out = model.paths["early"](torch.empty(2, 1, 350, 350))
        logits = model(torch.empty(2, 3, 350, 350))
    assert tuple(path_out.shape) == (2, 512, 21, 21)
    assert tuple(logits.shape) == (2, 2)
    dense = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(3 * 512, 750), (750, 256), (256, 2)]
    dropout = [m for m in model.head if isinstance(m, torch.nn.Dropout)]
    assert [d.p for d in dropout] == [0.5]
    convs = _convs(model.paths["late"])
    assert len(convs) == 16 and convs[0].in_channels == 1 and convs[-1].out_channels == 512
    assert sum(p.numel() for p in model.parameters()) == 61_415_216


def test_small_variant_has_the_same_stages_and_head() -> None:
    small = net.build("paranet-small")
    variant = net.find_variant("paranet-small")
    x = torch.zeros(1, 3, variant.image_size, variant.image_size)
    out = small.paths["thyroid"](x[:, :1])
    side = variant.image_size // 16  # four pools, the fifth dropped as in the paper's 350 -> 21
    assert tuple(out.shape) == (1, variant.widths[-1], side, side)
    assert tuple(small(x).shape) == (1, 2)
    dense = [m for m in small.head if isinstance(m, torch.nn.Linear)]
    assert [d.out_features for d in dense] == [750, 256, 2]
    assert len(_convs(small.paths["early"])) == 16
    with pytest.raises(ValueError, match="unknown ParaNet variant"):
        net.build("paranet-huge")


def test_paths_use_torchvision_vgg19_parameter_names_and_load_a_sites_weights() -> None:
    features = vgg_features(in_channels=1, last_pool=False)
    expected = {f"{i}.{kind}" for i in TORCHVISION_VGG19_CONVS for kind in ("weight", "bias")}
    assert set(features.state_dict()) == expected
    with torch.device("meta"):
        model = net.build("paranet")
    assert {
        k.removeprefix("paths.early.features.") for k in model.state_dict() if k.startswith("paths.early.")
    } == expected
    # A torchvision VGG19 state_dict (3-channel ImageNet stem, classifier included) loads into a 1-channel path.
    small = [8, 8, 8, 8, 8]
    rgb = vgg_features(small, in_channels=3)
    site_file = {f"features.{k}": v for k, v in rgb.state_dict().items()} | {"classifier.0.weight": torch.zeros(1)}
    grey = vgg_features(small, in_channels=1, last_pool=False)
    load_torchvision_features(grey, site_file)
    assert torch.allclose(_convs(grey)[0].weight, _convs(rgb)[0].weight.sum(dim=1, keepdim=True))
    assert torch.equal(_convs(grey)[-1].weight, _convs(rgb)[-1].weight)
    with pytest.raises(ValueError, match="no 'features"):
        load_torchvision_features(grey, {"fc.weight": torch.zeros(1)})


def _neck_image(frames: np.ndarray, views: tuple[str, ...], spacing: float = 1.8) -> Dataset:
    patient = nm.Patient("SYNPNET1", "SYNTHETIC^PARANET", dt.date(1960, 1, 1), "F")
    start = dt.datetime(2025, 1, 6, 9, 0)
    study = nm.StudyInfo(generate_uid(), start, accession="SYNPN1", description="(synthetic)")
    ds = nm.build_nm_image(
        frames.astype(np.uint16),
        patient=patient,
        study=study,
        series_uid=generate_uid(),
        series_number=1,
        series_description="PARATHYROID EARLY (synthetic)",
        agent="sestamibi",
        views=views,
        acquired=start + dt.timedelta(minutes=10),
        injected=start,
        pixel_spacing_mm=(spacing, spacing),
        body_part="NECK",
    )
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def test_preprocessing_reads_the_anterior_frame_of_a_multi_frame_image() -> None:
    rng = np.random.default_rng(1)
    posterior = rng.poisson(5, (160, 160))
    anterior = rng.poisson(5, (160, 160))
    anterior[70:80, 60:70] += 400  # a bright focus only the anterior frame has
    ds = _neck_image(np.stack([posterior, anterior]), ("posterior", "anterior"))
    frame = anterior_frame(ds, source_index=2)
    assert frame.frame_number == 2 and frame.view == "anterior" and frame.source_index == 2
    prepared = prepare_source(ds, 2, 128)
    assert prepared.network_input.shape == (128, 128) and prepared.display.shape == (160, 160)
    assert float(prepared.network_input.min()) >= 0.0 and float(prepared.network_input.max()) <= INPUT_CEILING
    # 160 px x 1.8 mm = 288 mm is wider than the neck field: cut to 220 mm
    assert prepared.box.size == round(220 / 1.8)
    row, column = np.unravel_index(int(np.argmax(prepared.network_input)), prepared.network_input.shape)
    assert (prepared.box.top + row * prepared.box.size / 128) == pytest.approx(75, abs=8)
    assert (prepared.box.left + column * prepared.box.size / 128) == pytest.approx(65, abs=8)


def test_preprocessing_of_a_single_frame_image_pads_a_small_field_and_removes_spikes() -> None:
    rng = np.random.default_rng(2)
    counts = rng.poisson(20, (1, 64, 100)).astype(np.float64)
    counts[0, 30:40, 45:55] += 200  # uptake: blurred, kept
    counts[0, 5, 5] = 60000  # a hot pixel / marker: removed
    ds = _neck_image(counts, ("anterior",), spacing=2.0)
    prepared = prepare_source(ds, 0, 96)
    assert (prepared.box.size, prepared.box.top, prepared.box.left) == (100, -18, 0)  # padded, not cut
    cleaned = remove_artefacts(counts[0])
    assert cleaned[5, 5] < 100 and cleaned[35, 50] > 150
    assert neck_box(np.zeros((64, 64)), None).size == 64  # no pixel spacing (pinhole): never cut


def test_late_image_registered_onto_the_early_one_puts_each_gland_in_one_place() -> None:
    """The patient lies down again for the 2-hour image (phantom: up to 2 cm and 8 degrees apart)."""
    size, errors = 64, []
    for case in [c for c in generate(12, seed=5) if c.glands][:6]:
        early, _, box = prepare_counts(case.early.astype(np.float32), case.pixel_spacing_mm, size)
        late, _, _ = prepare_counts(case.late.astype(np.float32), case.pixel_spacing_mm, size, box)
        registered, warp = register(early, late)
        assert registered.shape == early.shape and not np.array_equal(warp, IDENTITY)
        scale = box.size / size
        for gland in case.glands:
            on_early = ((gland.early[0] - box.left) / scale, (gland.early[1] - box.top) / scale)
            on_late = ((gland.late[0] - box.left) / scale, (gland.late[1] - box.top) / scale)
            moved = warp_point(warp, *on_early)
            errors.append(float(np.hypot(moved[0] - on_late[0], moved[1] - on_late[1])) * case.pixel_spacing_mm * scale)
            unregistered = float(np.hypot(on_early[0] - on_late[0], on_early[1] - on_late[1]))
            assert unregistered > 0.5  # the phantom did move the patient
    assert max(errors) < 3.0, f"registration errors {errors} mm"


def test_registration_leaves_an_image_with_nothing_to_align_as_cut() -> None:
    flat = np.zeros((64, 64), np.float32)
    early = np.zeros((64, 64), np.float32)
    early[20:30, 20:30] = 1.0
    registered, warp = register(early, flat)
    assert np.array_equal(warp, IDENTITY) and np.array_equal(registered, flat)


def test_network_needs_an_episode_with_early_and_late() -> None:
    model = net.build("paranet-small").eval()
    network = net.ParaNetNetwork(model, net.model_spec("paranet-small", "0" * 64, "test", True), 64)
    image = _neck_image(np.random.default_rng(3).poisson(20, (1, 64, 64)), ("anterior",))
    with pytest.raises(ValueError, match="needs an episode"):
        network.run([image])
    with pytest.raises(ValueError, match="late"):
        network.run_episode(["early"], [image])
    with pytest.raises(ValueError, match="knows the slots"):
        network.run_episode(["early", "late", "ct"], [image, image, image])
    finding = network.run_episode(["late", "early"], [image, image])  # no thyroid scan: zeros on its path
    assert set(finding.probabilities) == {"normal", "abnormal"} and len(finding.heatmaps) == 2
    assert finding.inference_ms > 0 and finding.explain_ms > 0  # the forward pass and Grad-CAM, timed apart


def test_site_of_a_point_follows_the_anterior_view_and_the_thyroid() -> None:
    thyroid = glands.ThyroidOutline(column=64.0, row=60.0, half_height=12.0)
    assert glands.site_of(50.0, 55.0, thyroid, 1.7) == "right-upper"  # image left = patient's right
    assert glands.site_of(78.0, 68.0, thyroid, 1.7) == "left-lower"
    assert glands.site_of(64.0, 100.0, thyroid, 1.7) == "mediastinal"
    codes = glands.site_codes("left-upper")
    assert (codes.location.value, codes.laterality, codes.modifier) == ("111002", glands.LEFT, glands.SUPERIOR)
    assert glands.site_codes("mediastinal").location == glands.MEDIASTINUM
    assert glands.site_codes("left-ectopic-cervical") == glands.SiteCodes(glands.NECK, glands.LEFT, None)
    score = glands.score_patient([(10.0, 10.0), (50.0, 50.0)], [(12.0, 11.0, 10.0), (90.0, 90.0, 10.0)], 1.0)
    assert (score.found, score.missed, score.false_foci, score.clean_normals) == (1, 1, 1, 0)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("parathyroid")
    truth = json.loads(write_studies(folder, patients=16, seed=11).read_text())
    return folder, truth


def test_committed_weights_find_planted_glands_on_synthetic_studies(studies: tuple[Path, dict[str, object]]) -> None:
    """Half the slow-washout glands found on the early image, and each found one also on the late image."""
    folder, truth = studies
    network = net.load_paranet_network("paranet-small")
    found = total = late_found = 0
    for case in truth["cases"]:  # type: ignore[attr-defined]
        slow = [g for g in case["glands"] if g["washout"] == "slow"]
        if case["label"] != "abnormal" or not slow:
            continue
        slots = [s for s in ("early", "late", "thyroid") if s in case["files"]]
        finding = network.run_episode(slots, [dcmread(folder / case["files"][s]) for s in slots])
        spacing = float(case["pixel_spacing_mm"])
        pairs = [finding.hotspots[i : i + 2] for i in range(0, len(finding.hotspots), 2)]
        for gland in slow:
            on_early = [(e, lt) for e, lt in pairs if _within(gland, "early", e.column, e.row, spacing)]
            found += bool(on_early)
            late_found += any(_within(gland, "late", lt.column, lt.row, spacing) for _, lt in on_early)
        total += len(slow)
    assert total >= 5
    assert found / total >= 0.5, f"found {found} of {total} slow-washout glands"
    assert late_found == found, f"{found - late_found} gland(s) found on the early image missed on the late one"


def _within(gland: dict[str, object], phase: str, column: float, row: float, spacing: float) -> bool:
    """The training's own rule (`glands.score_patient`): within the gland's radius + the hit margin."""
    gc, gr = gland[phase]  # type: ignore[misc]
    return glands.score_patient([(column, row)], [(gc, gr, float(gland["diameter_mm"]))], spacing).found == 1  # type: ignore[arg-type]


def test_sr_holds_one_point_per_candidate_on_early_and_late_with_its_site(
    studies: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    folder, truth = studies
    network = net.load_paranet_network("paranet-small")
    case = next(c for c in truth["cases"] if c["label"] == "abnormal" and "thyroid" in c["files"])  # type: ignore[attr-defined]
    sources = [dcmread(folder / case["files"][s]) for s in ("early", "late", "thyroid")]
    finding: Finding = network.run_episode(["early", "late", "thyroid"], sources)
    assert finding.display_images[0].shape == sources[0].pixel_array.shape
    pairs = [finding.hotspots[i : i + 2] for i in range(0, len(finding.hotspots), 2)]
    for early, late in pairs:
        assert (early.source_index, late.source_index) == (0, 1)
        assert early.site == late.site and early.site is not None
    sr = build_report(finding, sources)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    dump = assert_dsrdump_parses(path)
    assert dump.count("SCOORD") >= len(finding.hotspots)
    if finding.hotspots:
        assert "Parathyroid" in dump or "Mediastinum" in dump or "Neck" in dump
