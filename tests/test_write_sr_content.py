"""write/sr_content.py builds the same TID 1500 tree as highdicom's template classes (tests/sr_reference.py),
element by element: tags, VRs, values with their Python types, their encoding (DS strings, FL/FD bytes) and
item order, for hand-built findings and for the networks' findings on synthetic demo studies. Each tree's
content, encoded straight from its Items (write/content_items.py), is also the bytes its Datasets encode to."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from unittest import mock

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from scintnode.demo_cases import CASES
from scintnode.finding import Finding, Hotspot
from scintnode.models.registry import EpisodeNetwork, default_registry
from scintnode.models.spec import Code, LabelSpec
from scintnode.write import sr_content
from scintnode.write.content_items import Item, encode_sequence, to_dataset
from scintnode.write.seg import build_segmentation
from scintnode.write.sr import check_inputs
from tests import sr_reference
from tests.test_ct_outputs import FixedMask, phases  # noqa: F401  (phases is a fixture)
from tests.test_nm_header import study, thyroid_source, whole_body_source
from tests.test_write_sr import thyroid_finding

PARATHYROID = Code("111002", "SCT", "Parathyroid")
NECK = Code("45048000", "SCT", "Neck")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
SUPERIOR = Code("264217000", "SCT", "Superior")
# The slot each association of a demo episode fills, in the order the demo sends them.
EPISODE_SLOTS = {
    "paranet-small": (("early", "late"), ("thyroid",)),
    "ct-parathyroid-unet": (("unenhanced",), ("enhanced",)),
}


def assert_same_tree(ours: Sequence[Dataset], reference: Sequence[Dataset], path: str = "content") -> None:
    """Equal item by item and element by element; a mismatch names where it is, e.g.
    ``content[0].ContentSequence[7].ContentSequence[0].ContentSequence[0].ContentSequence[1].MeasuredValueSequence[0].NumericValue``."""
    assert len(ours) == len(reference), f"{path}: {len(ours)} items, highdicom's has {len(reference)}"
    for index, (item, expected) in enumerate(zip(ours, reference, strict=True)):
        where = f"{path}[{index}]"
        keywords, expected_keywords = [e.keyword for e in item], [e.keyword for e in expected]
        assert keywords == expected_keywords, f"{where}: {keywords}, highdicom's {expected_keywords}"
        for element, wanted in zip(item, expected, strict=True):
            _assert_same_element(element, wanted, f"{where}.{element.keyword}")


def _assert_same_element(element: DataElement, wanted: DataElement, path: str) -> None:
    assert element.VR == wanted.VR, f"{path}: VR {element.VR}, highdicom's {wanted.VR}"
    if element.VR == "SQ":
        assert_same_tree(element.value, wanted.value, path)
        return
    assert _typed(element.value) == _typed(wanted.value), f"{path}: {element.value!r}, highdicom's {wanted.value!r}"
    assert _encoded(element) == _encoded(wanted), f"{path}: {_encoded(element)!r}, highdicom's {_encoded(wanted)!r}"


def _typed(value: Any) -> Any:
    """The value with its Python type: equal values of different types (a DSfloat and a float, a str and a UID)
    still read differently to code that inspects the tree before it is written."""
    if isinstance(value, MultiValue):
        return (MultiValue, [(type(v), v) for v in value])
    return (type(value), value)


def _encoded(element: DataElement) -> bytes:
    """The element as a file holds it (explicit VR little endian): DS strings, FL/FD bytes, padding."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element)
    return bytes(buffer.getvalue())


def _items(tree: Sequence[Dataset]) -> Iterator[Dataset]:
    """Every Dataset in the tree: content items and the items of their sequences, at any depth."""
    for item in tree:
        yield item
        for element in item:
            if element.VR == "SQ":
                yield from _items(element.value)


@contextmanager
def _numbered_tracking_uids() -> Iterator[None]:
    """Tracking Unique Identifiers 2.25.1, 2.25.2, ... in the order the groups are made.

    The classification and hot-spot groups get a fresh generate_uid() each, different in every build, so two
    builds could only be compared there for being valid and distinct; numbered alike, they compare like every
    other value, order included. UIDs derived from entropy (the device UID) and the SEG's own Tracking UIDs
    pass through unchanged."""
    numbers = itertools.count(1)

    def numbered(prefix: str | None = PYDICOM_ROOT_UID, entropy_srcs: list[str] | None = None) -> str:
        if entropy_srcs is not None:
            return str(generate_uid(prefix, entropy_srcs))
        return f"2.25.{next(numbers)}"

    with (
        mock.patch.object(sr_content, "generate_uid", numbered),
        mock.patch.object(sr_reference, "generate_uid", numbered),
    ):
        yield


def _both(
    finding: Finding, sources: Sequence[Dataset], segmentation: Dataset | None = None
) -> tuple[list[Dataset], list[Dataset]]:
    """Our tree and highdicom's for the same finding, after the checks build_report makes first."""
    check_inputs(finding, sources)
    with _numbered_tracking_uids():
        ours = sr_content.measurement_report(finding, sources, segmentation)
    with _numbered_tracking_uids():
        reference = list(sr_reference.measurement_report(finding, sources, segmentation))
    return ours, reference


def assert_encoded_as_its_datasets(root: Item) -> None:
    """The root's content, encoded from its Items, is the Content Sequence its Datasets are written as."""
    content = encode_sequence(root.get("ContentSequence"))
    assert content is not None, "the content went the slow way, through Datasets"
    raw = RawDataElement(BaseTag(0x0040A730), "SQ", len(content), content, 0, False, True)
    assert _encoded(raw) == _encoded(to_dataset(root)["ContentSequence"])


def _assert_equal_to_highdicoms(
    finding: Finding, sources: Sequence[Dataset], segmentation: Dataset | None = None
) -> list[Dataset]:
    ours, reference = _both(finding, sources, segmentation)
    assert_same_tree(ours, reference)
    assert_encoded_as_its_datasets(sr_content.measurement_tree(finding, sources, segmentation))
    items = list(_items(ours))
    assert len({id(item) for item in items}) == len(items), "an item is shared: editing one would change another"
    return ours


def _named(tree: Sequence[Dataset], meaning: str) -> list[Dataset]:
    return [i for i in _items(tree) if "ValueType" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def test_the_comparison_names_where_the_trees_differ() -> None:
    source = thyroid_source()
    ours, reference = _both(thyroid_finding([source]), [source])
    probability = _named(ours, "Probability")[0].MeasuredValueSequence[0]
    probability.NumericValue = "81.250"  # the same number, another DS string
    with pytest.raises(AssertionError, match=r"MeasuredValueSequence\[0\]\.NumericValue: .*81\.250"):
        assert_same_tree(ours, reference)


def test_a_planar_thyroid_report_with_two_hot_spots() -> None:
    source = thyroid_source()
    hotspots = (Hotspot(0, 1, 50.5, 64.5, 0.97, "Grad-CAM peak"), Hotspot(0, 1, 80.0, 60.0, 0.6, "peak"))
    tree = _assert_equal_to_highdicoms(thyroid_finding([source], hotspots=hotspots), [source])
    assert len(_named(tree, "Image Region")) == 2


def test_images_of_two_studies() -> None:
    current, earlier = thyroid_source(study("ACC-CURRENT")), thyroid_source(study("ACC-EARLIER"))
    _assert_equal_to_highdicoms(thyroid_finding([current, earlier]), [current, earlier])


def test_a_model_not_trained_on_synthetic_data() -> None:
    source = thyroid_source()
    _assert_equal_to_highdicoms(thyroid_finding([source], synthetic=False), [source])


def test_hot_spots_with_their_own_site_laterality_and_topographical_modifier() -> None:
    source = thyroid_source()
    hotspots = (
        Hotspot(0, 1, 50.0, 60.0, 0.9, "Candidate", PARATHYROID, RIGHT, SUPERIOR),
        Hotspot(0, 1, 70.0, 80.0, 0.7, "Candidate", PARATHYROID, LEFT),
        Hotspot(0, 1, 64.0, 100.0, 0.5, "Candidate", NECK),
        Hotspot(0, 1, 30.0, 30.0, 0.3, "Grad-CAM peak"),
    )
    tree = _assert_equal_to_highdicoms(thyroid_finding([source], hotspots=hotspots), [source])
    assert [s.ConceptCodeSequence[0].CodeValue for s in _named(tree, "Topographical modifier")] == ["264217000"]


def test_a_whole_body_image_references_the_frames_the_network_used() -> None:
    source = whole_body_source()
    hotspots = (Hotspot(0, 2, 100.25, 700.75, 0.9, "Grad-CAM peak"), Hotspot(0, 1, 30.0, 40.0, 0.6, "peak"))
    tree = _assert_equal_to_highdicoms(thyroid_finding([source], hotspots=hotspots, frames=[2]), [source])
    frames = [i.ReferencedSOPSequence[0].ReferencedFrameNumber for i in _named(tree, "Source of Measurement")]
    assert frames == [2]


def test_a_ct_report_with_its_segmentation(phases: tuple[list[Dataset], list[Dataset]]) -> None:  # noqa: F811
    native, enhanced = (copy.deepcopy(series) for series in phases)
    for ds in native:
        ds.SpacingBetweenSlices = ds.SliceThickness  # optional in CT; highdicom describes it when present
    sources = [*native, *enhanced]
    finding = FixedMask().run_episode(["unenhanced"] * len(native) + ["enhanced"] * len(enhanced), sources)
    assert finding.volume is not None
    first, second = finding.volume.regions
    midline = dataclasses.replace(second, side="midline")  # no laterality
    finding = dataclasses.replace(finding, volume=dataclasses.replace(finding.volume, regions=(first, midline)))
    segmentation = build_segmentation(finding, sources)
    tree = _assert_equal_to_highdicoms(finding, sources, segmentation)
    assert len(_named(tree, "Referenced Segment")) == 2
    assert len(_named(tree, "Image Orientation (Patient) Column Z")) == 2  # the key slice of each region
    assert len(_named(tree, "Spacing between slices")) == 2
    assert len(_named(tree, "Laterality")) == 1


def test_images_of_other_sop_classes_and_modalities_get_highdicoms_library_entries() -> None:
    """A Secondary Capture with Modality NM (a camera's whole-body export) and a projection radiograph (TID
    1603 descriptors) beside the NM image: three Image Library groups."""
    nm = thyroid_source()
    capture = copy.deepcopy(nm)
    capture.SOPClassUID, capture.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    radiograph = copy.deepcopy(nm)
    radiograph.SOPClassUID, radiograph.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
    radiograph.Modality, radiograph.PatientOrientation, radiograph.ImagerPixelSpacing = "DX", ["L", "F"], [0.2, 0.3]
    tree = _assert_equal_to_highdicoms(thyroid_finding([nm, capture, radiograph]), [nm, capture, radiograph])
    (library,) = _named(tree, "Image Library")
    assert len(library.ContentSequence) == 3
    assert len(_named(tree, "Patient Orientation Row")) == 1


def test_codes_longer_than_16_characters_go_where_highdicom_puts_them() -> None:
    source = thyroid_source()
    finding = thyroid_finding([source])
    long_value = Code("12345678901234567890", "SCT", "Graves disease")
    urn = Code("urn:oid:1.2.3.4.5.6.7.8.9", "URN", "Normal")
    labels = (
        dataclasses.replace(finding.model.labels[0], code=long_value),
        dataclasses.replace(finding.model.labels[1], code=urn),
        *finding.model.labels[2:],
    )
    finding = dataclasses.replace(finding, model=dataclasses.replace(finding.model, labels=labels))
    tree = _assert_equal_to_highdicoms(finding, [source])
    codes = [i.ConceptCodeSequence[0] for i in _named(tree, "Finding")]
    assert any("LongCodeValue" in c for c in codes) and any("URNCodeValue" in c for c in codes)


def test_what_highdicom_refuses_is_refused() -> None:
    source = thyroid_source()
    finding = thyroid_finding([source])
    wordy = LabelSpec("graves", "Graves' disease", Code("353295004", "SCT", "Graves disease " + "x" * 50))
    wordy_finding = dataclasses.replace(
        finding, model=dataclasses.replace(finding.model, labels=(wordy, *finding.model.labels[1:]))
    )
    for build in (sr_content.measurement_report, sr_reference.measurement_report):
        with pytest.raises(ValueError, match="64"):
            build(wordy_finding, [source])


def test_a_measurement_that_is_not_a_python_number_is_refused_as_highdicom_refuses_it(
    phases: tuple[list[Dataset], list[Dataset]],  # noqa: F811
) -> None:
    native, enhanced = phases
    sources = [*native, *enhanced]
    finding = FixedMask().run_episode(["unenhanced"] * len(native) + ["enhanced"] * len(enhanced), sources)
    assert finding.volume is not None
    segmentation = build_segmentation(finding, sources)
    # a numpy scalar, as a network could hand over by mistake: not an int or float to highdicom's NUM
    regions = tuple(dataclasses.replace(r, volume_mm3=np.float32(r.volume_mm3)) for r in finding.volume.regions)  # type: ignore[arg-type]
    numpy_volumes = dataclasses.replace(finding, volume=dataclasses.replace(finding.volume, regions=regions))
    for build in (sr_content.measurement_report, sr_reference.measurement_report):
        with pytest.raises(TypeError):
            build(numpy_volumes, sources, segmentation)


def _demo_findings(name: str, folder: Path) -> Iterator[tuple[Finding, list[Dataset]]]:
    """The network's findings on the synthetic studies `scintnode demo` sends it (one per class)."""
    network = default_registry().get(name)
    for demo in CASES[name](folder, 1, 7):
        sources: list[Dataset] = []
        slots: list[str] = []
        for number, association in enumerate(demo.associations):
            for position, path in enumerate(association):
                sources.append(dcmread(path))
                if name in EPISODE_SLOTS:
                    names = EPISODE_SLOTS[name][number]
                    slots.append(names[min(position, len(names) - 1)])
        if slots:
            yield cast(EpisodeNetwork, network).run_episode(slots, sources), sources
        else:
            yield network.run(sources), sources


@pytest.mark.parametrize(
    "name", ["thyroid-resnet34", "i131-neck-resnet18", "dscint", "paranet-small", "ct-parathyroid-unet"]
)
def test_the_networks_findings_on_demo_studies(name: str, tmp_path: Path) -> None:
    trees = []
    for finding, sources in _demo_findings(name, tmp_path):
        segmentation = build_segmentation(finding, sources) if finding.volume and finding.volume.regions else None
        trees.append(_assert_equal_to_highdicoms(finding, sources, segmentation))
    assert trees
    content = [root for tree in trees for root in tree]
    if name == "dscint":  # both views of the 2-frame whole-body image
        references = [i.ReferencedSOPSequence[0] for i in _named(content, "Source of Measurement")]
        assert references and all(list(r.ReferencedFrameNumber) == [1, 2] for r in references)
    if name == "paranet-small":  # candidates placed on a gland's side and level
        assert _named(content, "Laterality") and _named(content, "Topographical modifier")
    if name == "ct-parathyroid-unet":
        assert _named(content, "Referenced Segment") and _named(content, "Slice Thickness")
