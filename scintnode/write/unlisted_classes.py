"""Image SOP classes the node accepts that highdicom's tables leave out, and how its writers stand in for them.

Older gamma cameras still send NM Image Storage (Retired), 1.2.840.10008.5.1.4.1.1.5. Its Patient and Study
modules are those of NM Image Storage, and its modality is NM, but highdicom looks both up by SOP class and
refuses a class its tables do not list."""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from scintnode.models.spec import Code
from scintnode.receive_index import NM_IMAGE_STORAGE, NM_IMAGE_STORAGE_RETIRED

SOP_CLASS_UID_TAG = 0x00080016

MODALITIES = {NM_IMAGE_STORAGE_RETIRED: Code("NM", "DCM", "Nuclear Medicine")}  # CID 29
# Classes whose references may not name frames (dciodvfy: not a multi-frame class): the reference covers the image.
SINGLE_FRAME = frozenset({NM_IMAGE_STORAGE_RETIRED})
_LISTED_STAND_IN = {NM_IMAGE_STORAGE_RETIRED: NM_IMAGE_STORAGE}


def as_listed_class(source: Dataset) -> Dataset:
    """`source` itself, or for an unlisted class a view of it that names the listed class it stands in for,
    for highdicom's copying of patient and study attributes. The view shares `source`'s other elements and
    leaves `source` unchanged."""
    stand_in = _LISTED_STAND_IN.get(str(source.get("SOPClassUID", "")))
    if stand_in is None:
        return source
    view = Dataset(dict(source.items()))
    view[SOP_CLASS_UID_TAG] = DataElement(SOP_CLASS_UID_TAG, "UI", stand_in)
    return view
