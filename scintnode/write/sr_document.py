"""The Comprehensive 3D SR document around a TID 1500 content tree (write/sr_content.py builds it).

highdicom's `Comprehensive3DSR` constructor writes the tree it is given into the document as it is, and
besides deep-copies it and converts the copy back into its own classes (for its ``content`` property,
which nothing here reads), then searches the tree twice for image references, building and validating a
highdicom ContentItem per node on each pass. For a thyroid report that was 17 of the 19 ms the constructor
took, about as long as the thyroid network itself. `PreliminaryComprehensive3DSR` fills the same modules
as a `highdicom.SOPClass` (its shared modules set by write/sop_common.py, then highdicom's patient and study
copying and its Contributing Equipment, with the camera's entry from write/equipment.py) and finds the
references with plain attribute reads. Given the tree as Items (write/content_items.py), it holds the
content already encoded.
`tests/test_write_sr_document.py` requires its output to equal the constructor's, element by element, and
`tests/test_write_content_items.py` the file from Items to equal the file from their Datasets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import highdicom as hd
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import Comprehensive3DSRStorage

from scintnode.write.content_items import Item, encode_sequence, referenced_instance_uids, to_dataset
from scintnode.write.equipment import acquisition_first
from scintnode.write.part10 import keeps_ascii
from scintnode.write.sop_common import Placement, start_document
from scintnode.write.unlisted_classes import as_listed_class

_CONTENT_SEQUENCE = BaseTag(0x0040A730)


class PreliminaryComprehensive3DSR(hd.SOPClass):  # type: ignore[misc]  # highdicom is not followed (pyproject)
    """A complete, unverified, preliminary Comprehensive 3D SR in the study of ``evidence[0]``.

    ``content`` holds the root of the tree: Datasets (write/sr_content.py's `measurement_report`), whose items
    become the document's own, not copies, so it must not be reused for another document; or an `Item`
    (`measurement_tree`), whose content goes in encoded (see `_take_root`). Every instance the tree
    references must be among ``evidence``; evidence from the first item's study is Current Requested
    Procedure Evidence, from any other study Pertinent Other Evidence."""

    def __init__(
        self,
        evidence: Sequence[Dataset],
        content: Sequence[Dataset | Item],
        *,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        instance_number: int,
        manufacturer: str,
        series_description: str,
        previous_versions: Sequence[Dataset] = (),
        contributing_equipment: Sequence[hd.ContributingEquipment] = (),
    ) -> None:
        if not evidence:
            raise ValueError("an SR needs evidence: the first item decides its patient and study")
        if len(content) != 1:
            raise ValueError(f"the content must be a single root container, got {len(content)} items")
        first = evidence[0]
        placement = Placement(
            series_instance_uid, series_number, sop_instance_uid, instance_number, manufacturer, series_description
        )
        # in place of SOPClass.__init__: the same attributes, without its checks' cost
        # in the source's character set, before the content is encoded in it
        start_document(self, first, placement, sop_class_uid=Comprehensive3DSRStorage, modality="SR")
        self.CompletionFlag = "COMPLETE"
        self.VerificationFlag = "UNVERIFIED"
        self.PreliminaryFlag = "PRELIMINARY"
        root = content[0]
        encoded = self._take_root(root)
        current, other = _evidence(evidence, referenced_instance_uids(root), str(self.StudyInstanceUID))
        if current:
            self.CurrentRequestedProcedureEvidenceSequence = current
        if other:
            self.PertinentOtherEvidenceSequence = other
        if previous_versions:
            self.PredecessorDocumentsSequence = _references(previous_versions)
        self.PerformedProcedureCodeSequence: list[Dataset] = []
        self.ReferencedPerformedProcedureStepSequence: list[Dataset] = []
        self.copy_patient_and_study_information(as_listed_class(first))
        self._add_contributing_equipment(acquisition_first(first, contributing_equipment))
        if encoded:
            # as if read from an Explicit VR Little Endian file: pydicom then writes the raw content as it is,
            # as write/part10.py does (unless the character set is changed after this)
            self.set_original_encoding(False, True, self._character_set)

    def _take_root(self, root: Dataset | Item) -> bool:
        """Make the root container's elements the document's; True if its content went in encoded.

        An Item's content items are encoded straight to bytes (write/content_items.py) where the document's
        character set keeps ASCII as it is, and held as a raw Content Sequence that pydicom parses only if it
        is read: building and encoding them as Datasets took a fifth of a planar job."""
        if isinstance(root, Dataset):
            for element in root:
                self[element.tag] = element
            return False
        children = root.get("ContentSequence", [])
        encoded = encode_sequence(children) if children and keeps_ascii(self.get("SpecificCharacterSet")) else None
        elements = dict(root.elements)
        if encoded is not None:
            del elements["ContentSequence"]
        for element in to_dataset(Item(elements)):
            self[element.tag] = element
        if encoded is None:
            return False
        self[_CONTENT_SEQUENCE] = RawDataElement(_CONTENT_SEQUENCE, "SQ", len(encoded), encoded, 0, False, True)
        return True


def _evidence(
    evidence: Sequence[Dataset], referenced: Iterable[str], study_uid: str
) -> tuple[list[Dataset], list[Dataset]]:
    """The two evidence sequences' items, each instance once; raise ValueError naming any referenced instance
    that is not evidence (a viewer could not find it)."""
    first_of_each: dict[str, Dataset] = {}
    for ds in evidence:
        first_of_each.setdefault(str(ds.SOPInstanceUID), ds)
    unique = list(first_of_each.values())
    missing = set(referenced) - first_of_each.keys()
    if missing:
        raise ValueError(f"the content references instances that are not evidence: {', '.join(sorted(missing))}")
    current = [ds for ds in unique if str(ds.StudyInstanceUID) == study_uid]
    other = [ds for ds in unique if str(ds.StudyInstanceUID) != study_uid]
    return _references(current), _references(other)


def _references(instances: Iterable[Dataset]) -> list[Dataset]:
    """Hierarchical SOP Instance Reference items: study, then series, then instance, in first-seen order."""
    studies: dict[str, dict[str, list[Dataset]]] = {}
    for ds in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        studies.setdefault(str(ds.StudyInstanceUID), {}).setdefault(str(ds.SeriesInstanceUID), []).append(item)
    items = []
    for study_uid, series in studies.items():
        study_item = Dataset()
        study_item.StudyInstanceUID = study_uid
        study_item.ReferencedSeriesSequence = []
        for series_uid, instance_items in series.items():
            series_item = Dataset()
            series_item.SeriesInstanceUID = series_uid
            series_item.ReferencedSOPSequence = instance_items
            study_item.ReferencedSeriesSequence.append(series_item)
        items.append(study_item)
    return items
