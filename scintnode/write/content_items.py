"""Light data set trees for the SR's content: made into pydicom Datasets, or encoded straight to bytes.

A thyroid report's content tree holds about 450 elements in 130 nested items. As pydicom DataElements and
Datasets (each value converted and validated, each Dataset with its bookkeeping) it took 3.6 ms to build and
2.2 ms more to encode, a fifth of the job. An `Item` holds its elements as keyword -> value, the values as
they would be handed to pydicom, so `to_dataset` makes exactly the Datasets that ``ds.Keyword = value`` would.
`encode_sequence` writes a sequence of Items as `write/part10.py` writes the same Datasets (explicit VR little
endian, defined lengths), for the element kinds the SR content uses; anything else (text that is not ASCII,
a value of another type) returns None and the caller makes Datasets instead.
tests/test_write_content_items.py holds the two ways equal byte for byte.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import DSdecimal, DSfloat

from scintnode.write.part10 import BINARY_FORMATS, ITEM, element_header, padded_ascii

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UR", "UT"})


class Item:
    """One data set of the tree: keyword -> value, children of a sequence as Items."""

    __slots__ = ("elements",)

    def __init__(self, elements: dict[str, Any]) -> None:
        self.elements = elements

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.elements.get(keyword, default)

    def __repr__(self) -> str:
        return f"Item({self.elements!r})"


def to_dataset(item: Item) -> Dataset:
    """The pydicom Dataset of ``item`` and its children, each element as ``ds.Keyword = value`` makes it."""
    converted = (DataElement(*_attribute(keyword), _dataset_value(value)) for keyword, value in item.elements.items())
    return Dataset({element.tag: element for element in converted})


def encode_sequence(items: Sequence[Item]) -> bytes | None:
    """The value of a sequence of ``items`` as `write/part10.py` encodes their Datasets, in a parent whose
    character set writes ASCII text as its ASCII bytes (`part10.keeps_ascii`); None where pydicom's rules are
    needed."""
    try:
        return b"".join(_sequence_parts(items))
    except _NeedsDatasets:
        return None


def referenced_instance_uids(node: Item | Dataset) -> Iterator[str]:
    """The SOP Instance UID of every IMAGE and COMPOSITE item below ``node``, at any depth."""
    for child in node.get("ContentSequence", ()):
        if child.get("ValueType") in ("IMAGE", "COMPOSITE"):
            yield str(child.get("ReferencedSOPSequence")[0].get("ReferencedSOPInstanceUID"))
        yield from referenced_instance_uids(child)


class _NeedsDatasets(Exception):
    """An element this module does not encode: the tree must become Datasets."""


def _dataset_value(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], Item):
        return [to_dataset(child) for child in value]
    return value


def _sequence_parts(items: Sequence[Item]) -> Iterator[bytes]:
    for item in items:
        body = b"".join(_item_parts(item))
        yield ITEM
        yield struct.pack("<I", len(body))
        yield body


def _item_parts(item: Item) -> Iterator[bytes]:
    for tag, vr, value in sorted((*_attribute(keyword), value) for keyword, value in item.elements.items()):
        encoded = b"".join(_sequence_parts(value)) if vr == "SQ" else _value(vr, value)
        header = element_header(tag, vr, len(encoded))
        if header is None:
            raise _NeedsDatasets
        yield header
        yield encoded


def _value(vr: str, value: Any) -> bytes:
    """The bytes of one element's value as pydicom converts and writes it."""
    if vr in BINARY_FORMATS:
        values = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise _NeedsDatasets
        return struct.pack(f"<{len(values)}{BINARY_FORMATS[vr]}", *values)
    if vr in ("DS", "IS"):
        values = value if isinstance(value, list | tuple) else [value]
        # an int becomes an IS as its digits; a DS is written as pydicom formatted it (auto-format or as given)
        wanted = int if vr == "IS" else (DSfloat, DSdecimal)
        if not all(isinstance(v, wanted) and not isinstance(v, bool) for v in values):
            raise _NeedsDatasets
        text = "\\".join(str(getattr(v, "original_string", v)) for v in values)
    elif vr in _TEXT_VRS or vr == "UI":
        if not isinstance(value, str):
            raise _NeedsDatasets
        text = value
    else:
        raise _NeedsDatasets
    if not text.isascii():
        raise _NeedsDatasets
    return padded_ascii(text, vr)


@functools.cache
def _attribute(keyword: str) -> tuple[int, str]:
    """Tag and VR of a keyword from pydicom's dictionary. The tag is a plain int: an item's elements are sorted
    by it, and pydicom's BaseTag compares in Python (half of the sorting of a report's thousand elements)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    return int(tag), str(dictionary_VR(tag))
