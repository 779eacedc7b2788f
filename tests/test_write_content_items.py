"""write/content_items.py encodes a content tree to the bytes its pydicom Datasets are written as, and the SR
document holds that encoding as a raw Content Sequence only where the bytes come out the same.

The oracle is pydicom: arbitrary trees against pydicom's writer, and whole SR documents built from the Items
against the same documents built from their Datasets (tests/test_write_sr_content.py pins the Datasets to
highdicom's templates)."""

from __future__ import annotations

import copy
from io import BytesIO
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from scintnode.finding import Hotspot
from scintnode.write.content_items import Item, encode_sequence, referenced_instance_uids, to_dataset
from scintnode.write.part10 import encode_file
from scintnode.write.sr import MANUFACTURER, check_inputs
from scintnode.write.sr_content import measurement_tree
from scintnode.write.sr_document import PreliminaryComprehensive3DSR
from tests.test_nm_header import study, thyroid_source
from tests.test_write_part10 import pydicom_bytes
from tests.test_write_sr import thyroid_finding

CONTENT_SEQUENCE = 0x0040A730


def pydicom_sequence_value(items: list[Item]) -> bytes:
    """The value bytes of a Content Sequence holding ``items``' Datasets, as pydicom's writer encodes it."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, DataElement(CONTENT_SEQUENCE, "SQ", [to_dataset(item) for item in items]))
    return bytes(buffer.getvalue())[12:]  # tag, VR, reserved and 32-bit length


_ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_any_text = st.text(max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_leaf = st.fixed_dictionaries(
    {},
    optional={
        "CodeValue": _ascii_text.map(lambda t: t[:16]),  # SH
        "CodeMeaning": st.one_of(_ascii_text, _any_text),  # LO
        "TextValue": st.one_of(_ascii_text, _any_text),  # UT
        "ValueType": st.sampled_from(["TEXT", "NUM", "CODE"]),  # CS
        "UID": st.builds(lambda: str(generate_uid())),  # UI, odd lengths padded with NUL
        "NumericValue": _finite.map(lambda v: DS(v, auto_format=True)),
        "FloatingPointValue": st.one_of(_finite, st.integers(-(2**31), 2**31)),  # FD
        "GraphicData": st.lists(st.floats(width=32), max_size=6),  # FL
        "ReferencedFrameNumber": st.one_of(st.integers(1, 10**6), st.lists(st.integers(1, 999), min_size=1)),  # IS
        "ReferencedSegmentNumber": st.integers(0, 65535),  # US
    },
)


def _tree(depth: int) -> Any:
    if depth == 0:
        return _leaf.map(Item)
    return st.builds(
        lambda elements, children: Item({**elements, **({"ContentSequence": children} if children else {})}),
        _leaf,
        st.lists(_tree(depth - 1), max_size=3),
    )


def _texts(item: Item) -> list[str]:
    texts = []
    for value in item.elements.values():
        if isinstance(value, list) and value and isinstance(value[0], Item):
            texts += [text for child in value for text in _texts(child)]
        elif isinstance(value, str):
            texts.append(value)
    return texts


@settings(max_examples=300, deadline=None)
@given(st.lists(_tree(2), min_size=1, max_size=3))
def test_arbitrary_trees_encode_as_pydicom_writes_their_datasets(items: list[Item]) -> None:
    encoded = encode_sequence(items)
    if all(text.isascii() for item in items for text in _texts(item)):
        assert encoded == pydicom_sequence_value(items)
    else:
        assert encoded is None  # text that is not ASCII: the document holds Datasets


def test_values_the_encoder_does_not_know_are_left_to_pydicom() -> None:
    assert encode_sequence([Item({"TextValue": b"bytes"})]) is None
    assert encode_sequence([Item({"ReferencedFrameNumber": "1"})]) is None  # IS given as text
    assert encode_sequence([Item({"ReferencedSegmentNumber": True})]) is None
    assert encode_sequence([Item({"NumericValue": 87.5})]) is None  # a DS given as a float, not formatted by DS
    assert encode_sequence([Item({"PatientName": "A^B"})]) is None  # PN is not a content item VR
    assert encode_sequence([Item({"TextValue": "x" * 70_000, "CodeMeaning": "y" * 70_000})]) is None


def test_references_are_found_in_items_and_datasets_alike() -> None:
    current, earlier = thyroid_source(study("ACC-CURRENT")), thyroid_source(study("ACC-EARLIER"))
    finding = thyroid_finding([current, earlier], hotspots=(Hotspot(1, 1, 10.0, 20.0, 0.9, "peak"),))
    tree = measurement_tree(finding, [current, earlier])
    found = list(referenced_instance_uids(tree))
    assert found == list(referenced_instance_uids(to_dataset(tree)))
    assert set(found) == {current.SOPInstanceUID, earlier.SOPInstanceUID}


def _documents(source: Dataset, tree: Item) -> tuple[Dataset, Dataset]:
    """The same document built from the Items and from their Datasets (the moments it was made aligned)."""
    placement: dict[str, Any] = {
        "series_instance_uid": generate_uid(),
        "series_number": 9001,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "series_description": "AI report (unverified) - test",
    }
    from_items = PreliminaryComprehensive3DSR([source], [tree], **placement)
    from_datasets = PreliminaryComprehensive3DSR([source], [to_dataset(tree)], **placement)
    for keyword in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        setattr(from_datasets, keyword, from_items.get(keyword))
    for ours, theirs in zip(
        from_items.ContributingEquipmentSequence, from_datasets.ContributingEquipmentSequence, strict=True
    ):
        theirs.ContributionDateTime = ours.ContributionDateTime
    return from_items, from_datasets


def _report(source: Dataset) -> Item:
    hotspots = (Hotspot(0, 1, 50.5, 64.5, 0.97, "Grad-CAM peak"), Hotspot(0, 1, 80.0, 60.0, 0.6, "peak"))
    finding = thyroid_finding([source], hotspots=hotspots)
    check_inputs(finding, [source])
    return measurement_tree(finding, [source])


def test_a_document_from_items_holds_its_content_encoded_and_writes_the_same_file() -> None:
    source = thyroid_source()
    from_items, from_datasets = _documents(source, _report(source))
    assert isinstance(from_items.get_item(CONTENT_SEQUENCE), RawDataElement)
    written = encode_file(copy.deepcopy(from_items))
    assert written == encode_file(from_datasets)
    assert written == pydicom_bytes(copy.deepcopy(from_items))  # pydicom writes the raw content as it is
    # read, the raw content becomes the same items
    assert [i.ConceptNameCodeSequence[0].CodeMeaning for i in from_items.ContentSequence] == [
        i.ConceptNameCodeSequence[0].CodeMeaning for i in from_datasets.ContentSequence
    ]
    assert dcmread(BytesIO(written)).ContentSequence[-1].ContentSequence[0].ValueType == "CONTAINER"


def test_a_character_set_that_may_not_keep_ascii_gets_datasets() -> None:
    source = thyroid_source()
    source.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    source.PatientName = "Yamada^Tarou=山田^太郎"
    from_items, from_datasets = _documents(source, _report(source))
    assert isinstance(from_items.get_item(CONTENT_SEQUENCE), DataElement)
    assert encode_file(from_items) == encode_file(from_datasets) == pydicom_bytes(from_datasets)


def test_text_that_is_not_ascii_gets_datasets() -> None:
    source = thyroid_source()
    source.SpecificCharacterSet = "ISO_IR 192"
    tree = _report(source)
    tree.get("ContentSequence")[-1].get("ContentSequence")[0].get("ContentSequence")[0].elements["TextValue"] = "Zürich"
    from_items, from_datasets = _documents(source, tree)
    assert isinstance(from_items.get_item(CONTENT_SEQUENCE), DataElement)
    assert encode_file(from_items) == encode_file(from_datasets) == pydicom_bytes(from_datasets)


def test_changing_the_character_set_afterwards_rewrites_the_content_through_pydicom() -> None:
    source = thyroid_source()
    from_items, from_datasets = _documents(source, _report(source))
    for document in (from_items, from_datasets):
        document.SpecificCharacterSet = "ISO_IR 100"
    assert encode_file(copy.deepcopy(from_items)) == pydicom_bytes(from_items) == encode_file(from_datasets)
