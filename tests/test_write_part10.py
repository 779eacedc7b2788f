"""write/part10.encode_file writes exactly the bytes pydicom's save_as(enforce_file_format=True) writes.

pydicom is the oracle: every result the five networks write on their demo studies, each character set a
site may send, and the element kinds the fast path hands back to pydicom."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage

from benchmarks.inference import OUTPUTS, demo_job
from scintnode.demo_cases import CASES
from scintnode.infer import run_network
from scintnode.models.registry import default_registry
from scintnode.write import part10
from scintnode.write.part10 import encode_file

# pydicom warns about the values some cases give on purpose (too long, not encodable in the character set)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

NETWORKS = ["thyroid-resnet34", "i131-neck-resnet18", "dscint", "paranet-small", "ct-parathyroid-unet"]


def pydicom_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def assert_encoded_as_pydicom(ds: Dataset) -> None:
    """Both encoders on their own copy: pydicom resolves ambiguous VRs in place while it writes. What pydicom
    cannot write, encode_file refuses alike."""
    try:
        theirs = pydicom_bytes(copy.deepcopy(ds))
    except (OSError, ValueError, TypeError, UnicodeError) as refused:
        with pytest.raises(type(refused)):
            encode_file(copy.deepcopy(ds))
        return
    ours = encode_file(copy.deepcopy(ds))
    assert len(ours) == len(theirs)
    first_difference = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
    assert first_difference is None, f"bytes differ from offset {first_difference}"


def document(character_set: str | list[str] | None = None, **elements: object) -> Dataset:
    ds = Dataset()
    if character_set is not None:
        ds.SpecificCharacterSet = character_set
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.PatientID = "P1"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("name", NETWORKS)
def test_every_result_of_the_networks_is_pydicoms_file_without_pydicoms_writer(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(ds: Dataset) -> bytes:
        raise AssertionError(f"a {ds.Modality} result went the slow way, through pydicom's writer")

    network = default_registry().get(name)
    with monkeypatch.context() as patched:
        patched.setattr(part10, "_pydicom_file", refuse)
        results = [
            run_network(network, job.sources, OUTPUTS.get(name, ("sr", "sc")), slots=job.slots)
            for job in map(demo_job, CASES[name](tmp_path, 1, 7))
        ]
    files = [out for result in results for out in result.outputs]
    assert {out.kind for out in files} == set(OUTPUTS.get(name, ("sr", "sc")))
    for out in files:
        assert out.encoded == pydicom_bytes(out.dataset), f"{name} {out.kind}"
        assert dcmread(BytesIO(out.encoded)).SOPInstanceUID == out.dataset.SOPInstanceUID


LATIN = "Müller^Jürgen"
CHARACTER_SETS: list[tuple[str | list[str] | None, str]] = [
    (None, "Smith^John"),
    ("ISO_IR 100", LATIN),
    ("ISO_IR 192", "Ω^Δ 山田"),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    ("ISO_IR 144", "Иванов^Иван"),
    ("ISO_IR 13", "ﾔﾏﾀﾞ^ﾀﾛｳ"),
]


@pytest.mark.parametrize(("character_set", "name"), CHARACTER_SETS)
def test_text_in_each_character_set_nested_items_inheriting_it(
    character_set: str | list[str] | None, name: str
) -> None:
    item = Dataset()
    item.CodeMeaning = name.replace("^", " ")  # LO in the document's character set
    item.CodeValue = "T-1"
    item.TextValue = "plain ASCII text"
    ds = document(
        character_set,
        PatientName=name,
        ReferringPhysicianName=["A^B", name],
        StudyDescription=name.replace("^", " "),
        InstitutionName="Hospital",
        ConceptNameCodeSequence=[item],
    )
    assert_encoded_as_pydicom(ds)


def test_an_item_with_a_character_set_of_its_own() -> None:
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.CodeMeaning = "Ω meaning"
    empty_set = Dataset()
    empty_set.SpecificCharacterSet = ""
    empty_set.CodeMeaning = "Müller"
    assert_encoded_as_pydicom(document("ISO_IR 100", ConceptNameCodeSequence=[item, empty_set]))


def _raw_document() -> Dataset:
    """A data set read back from a file: its elements stay raw until they are used (written as they are)."""
    return dcmread(BytesIO(pydicom_bytes(document("ISO_IR 100", PatientName=LATIN, Rows=4))))


def _raw_document_in_another_character_set() -> Dataset:
    """pydicom decodes raw text in the new set and encodes it again: the Latin-1 bytes are not kept."""
    ds = _raw_document()
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _raw_element_made_in_memory() -> Dataset:
    """Not read from a file: pydicom decodes the value (dropping the NUL padding) and encodes it again."""
    ds = document()
    ds[0x00081030] = RawDataElement(BaseTag(0x00081030), "LO", 4, b"ab\x00\x00", 0, False, True)
    return ds


EDGE_CASES: dict[str, Callable[[], Dataset]] = {
    "empty values of each kind": lambda: document(
        PatientName="", StudyDate="", Rows=None, PixelSpacing=None, ReferencedFrameNumber=None, ContentSequence=[]
    ),
    "several values": lambda: document(
        ImageType=["DERIVED", "SECONDARY", "OTHER"],
        PixelSpacing=[0.5, "1.25"],
        ReferencedFrameNumber=[1, 2, 3],
        FrameIncrementPointer=0x00181063,
        ReferencedSegmentNumber=[1, 2],
        GraphicData=[1.5, 2.25, -3.0],
    ),
    "odd lengths padded": lambda: document(Modality="NM", StudyInstanceUID="1.2.3", SeriesDescription="odd"),
    "numbers as numpy values": lambda: document(
        Columns=np.int64(4), GraphicData=[np.float32(1.5), np.float32(2.5)], SliceThickness=np.float64(2.5)
    ),
    "a numpy array pydicom cannot write": lambda: document(GraphicData=np.array([1.5, 2.5], dtype=np.float32)),
    "dates and times as objects": lambda: document(
        StudyDate=datetime.date(2026, 11, 24),
        StudyTime=datetime.time(9, 30, 1, 250),
        AcquisitionDateTime=datetime.datetime(2026, 11, 24, 9, 30),
    ),
    "bytes of odd length": lambda: document(PixelData=b"\x01\x02\x03", Rows=1, Columns=3, BitsAllocated=8),
    "a value too long for a 16-bit length": lambda: document(StudyDescription="x" * 70_000),
    "an ambiguous VR": lambda: _with_ambiguous_vr(),
    "a LUT descriptor": lambda: _with_lut_descriptor(),
    "a retired group length and a private element": lambda: _with_group_length_and_private(),
    "a sequence of undefined length": lambda: _with_undefined_lengths(sequence=True),
    "an item of undefined length": lambda: _with_undefined_lengths(sequence=False),
    "raw elements read from a file": _raw_document,
    "raw elements read from a file, in another character set since": _raw_document_in_another_character_set,
    "a raw element in a data set made in memory": _raw_element_made_in_memory,
    "pixel data marked of undefined length": lambda: _with_undefined_length_bytes(),
}


def _with_undefined_length_bytes() -> Dataset:
    """pydicom marks native Pixel Data of defined length before it resolves its VR (16 bits: OW); another
    element marked of undefined length is written with a delimiter."""
    ds = document(Rows=1, Columns=2, BitsAllocated=16, PixelRepresentation=0)
    ds.add_new(0x7FE00010, "OB or OW", b"\x01\x00\x02\x00")
    ds["PixelData"].is_undefined_length = True
    ds.add_new(0x00091001, "OB", b"\x01\x02")
    ds.add_new(0x00090010, "LO", "SCINTNODE")
    ds[0x00091001].is_undefined_length = True
    return ds


def _with_ambiguous_vr() -> Dataset:
    ds = document(PixelRepresentation=1)
    ds.add_new(0x00280106, "US or SS", -5)  # Smallest Image Pixel Value
    return ds


def _with_lut_descriptor() -> Dataset:
    ds = document(PixelRepresentation=0)
    ds.add_new(0x00283002, "SS", [40000, 0, 16])  # LUT Descriptor: the first value is read as US
    return ds


def _with_group_length_and_private() -> Dataset:
    ds = document()
    ds.add_new(0x00080000, "UL", 42)
    ds.add_new(0x00090010, "LO", "SCINTNODE")
    ds.add_new(0x00091001, "UN", b"\x00\x01\x02")
    return ds


def _with_undefined_lengths(*, sequence: bool) -> Dataset:
    item = Dataset()
    item.CodeValue = "1"
    ds = document(ConceptNameCodeSequence=Sequence([item]))
    if sequence:
        ds["ConceptNameCodeSequence"].is_undefined_length = True
    else:
        item.is_undefined_length_sequence_item = True
    return ds


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_are_written_as_pydicom_writes_them(case: str) -> None:
    assert_encoded_as_pydicom(EDGE_CASES[case]())


def test_other_transfer_syntaxes_and_a_given_preamble() -> None:
    implicit = document(PatientName=LATIN)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert_encoded_as_pydicom(implicit)
    preamble = document()
    preamble.preamble = bytes(range(128))
    assert_encoded_as_pydicom(preamble)
    assert encode_file(preamble)[:128] == bytes(range(128))


def test_what_pydicom_refuses_is_refused() -> None:
    short_preamble = document()
    short_preamble.preamble = b"\x00" * 10
    with pytest.raises(ValueError, match="128"):
        encode_file(short_preamble)
    file_meta_in_data_set = document()
    file_meta_in_data_set.add_new(0x00020010, "UI", ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match="File Meta Information"):
        encode_file(file_meta_in_data_set)


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\\\x00"), max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    character_set=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO_IR 144", ["", "ISO 2022 IR 87"]]),
    texts=st.lists(_TEXT, min_size=1, max_size=3),
    number=st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_arbitrary_text_and_numbers(character_set: str | list[str] | None, texts: list[str], number: float) -> None:
    item = Dataset()
    item.CodeMeaning = texts[0]
    item.GraphicData = [number, number / 2]
    ds = document(
        character_set,
        StudyDescription=texts[-1],
        OtherPatientNames=[t.replace("=", "") for t in texts],
        ConceptNameCodeSequence=[item],
    )
    assert_encoded_as_pydicom(ds)
