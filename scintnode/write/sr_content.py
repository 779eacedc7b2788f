"""The TID 1500 content tree of the SR (write/sr.py lays it out), built as light `content_items.Item` trees.

highdicom's template classes (MeasurementReport and the groups, measurements and references inside it) took
about 8.5 ms to build a thyroid report's tree, more than a fifth of the 38 ms job: every content item checks
its arguments and sets its attributes one keyword at a time, reading them back to validate the next; image
references search highdicom's IOD tables (may the SOP class have frames, pixel data?) and the Image Library
rebuilds its SOP class table per image. This module writes the same elements directly, as Items that
write/sr.py encodes straight to bytes (write/content_items.py) or makes into pydicom Datasets.
tests/test_write_sr_content.py holds `measurement_report`'s Datasets equal to highdicom's templates (kept there
as the reference) element by element: tags, VRs, values, DS strings and item order, for planar, multi-frame,
episode and CT findings with their SEG.

Every call builds fresh Items, none shared between items or reports, so editing one item of a written
report cannot change another.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from highdicom.sr.templates import _get_coded_modality
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from scintnode.finding import Finding, Hotspot, Region
from scintnode.models.spec import Code, ModelSpec
from scintnode.write import unlisted_classes
from scintnode.write.content_items import Item, to_dataset

MANUFACTURER = "scintnode"

# Relationship types (PS3.3 C.17.3.2.4)
_CONTAINS = "CONTAINS"
_HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
_HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
_HAS_ACQ_CONTEXT = "HAS ACQ CONTEXT"
_SELECTED_FROM = "SELECTED FROM"

# Concept names and values, spelt as highdicom (and pydicom's code dictionary) spell them.
_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
_LANGUAGE = Code("121049", "DCM", "Language of Content Item and Descendants")
_ENGLISH_US = Code("en-US", "RFC5646", "English (United States)")
_OBSERVER_TYPE = Code("121005", "DCM", "Observer Type")
_DEVICE = Code("121007", "DCM", "Device")
_DEVICE_UID = Code("121012", "DCM", "Device Observer UID")
_DEVICE_NAME = Code("121013", "DCM", "Device Observer Name")
_DEVICE_MANUFACTURER = Code("121014", "DCM", "Device Observer Manufacturer")
_DEVICE_MODEL_NAME = Code("121015", "DCM", "Device Observer Model Name")
_PROCEDURE_REPORTED = Code("121058", "DCM", "Procedure reported")
_IMAGE_LIBRARY = Code("111028", "DCM", "Image Library")
_IMAGE_LIBRARY_GROUP = Code("126200", "DCM", "Image Library Group")
_SOURCE = Code("260753009", "SCT", "Source")
_MODALITY = Code("121139", "DCM", "Modality")
_FRAME_OF_REFERENCE_UID = Code("112227", "DCM", "Frame of Reference UID")
_PIXEL_DATA_ROWS = Code("110910", "DCM", "Pixel Data Rows")
_PIXEL_DATA_COLUMNS = Code("110911", "DCM", "Pixel Data Columns")
_HORIZONTAL_PIXEL_SPACING = Code("111026", "DCM", "Horizontal Pixel Spacing")
_VERTICAL_PIXEL_SPACING = Code("111066", "DCM", "Vertical Pixel Spacing")
_SLICE_THICKNESS = Code("112225", "DCM", "Slice Thickness")
_SPACING_BETWEEN_SLICES = Code("112226", "DCM", "Spacing between slices")
_IMAGE_POSITION = (
    Code("110901", "DCM", "Image Position (Patient) X"),
    Code("110902", "DCM", "Image Position (Patient) Y"),
    Code("110903", "DCM", "Image Position (Patient) Z"),
)
_IMAGE_ORIENTATION = (
    Code("110904", "DCM", "Image Orientation (Patient) Row X"),
    Code("110905", "DCM", "Image Orientation (Patient) Row Y"),
    Code("110906", "DCM", "Image Orientation (Patient) Row Z"),
    Code("110907", "DCM", "Image Orientation (Patient) Column X"),
    Code("110908", "DCM", "Image Orientation (Patient) Column Y"),
    Code("110909", "DCM", "Image Orientation (Patient) Column Z"),
)
_PATIENT_ORIENTATION_ROW = Code("111044", "DCM", "Patient Orientation Row")
_PATIENT_ORIENTATION_COLUMN = Code("111043", "DCM", "Patient Orientation Column")
_PIXELS = Code("{pixels}", "UCUM", "Pixels")
_MILLIMETRE = Code("mm", "UCUM", "mm")
_DIRECTION_COSINE = Code("{-1:1}", "UCUM", "{-1:1}")
_IMAGING_MEASUREMENTS = Code("126010", "DCM", "Imaging Measurements")
_MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")
_TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
_TRACKING_UID = Code("112040", "DCM", "Tracking Unique Identifier")
_FINDING = Code("121071", "DCM", "Finding")
_FINDING_SITE = Code("363698007", "SCT", "Finding Site")
_LATERALITY = Code("272741003", "SCT", "Laterality")
_TOPOGRAPHICAL_MODIFIER = Code("106233006", "SCT", "Topographical modifier")
_RIGHT = Code("24028007", "SCT", "Right")
_LEFT = Code("7771000", "SCT", "Left")
_ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
_ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
_ALGORITHM_MANUFACTURER = Code("122405", "DCM", "Algorithm Manufacturer")
_ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
_ALGORITHM_FAMILY = Code("111000", "DCM", "Algorithm Family")
_ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
_PROBABILITY = Code("122157", "DCM", "Probability")
_PERCENT = Code("%", "UCUM", "Percent")
_VOLUME = Code("118565006", "SCT", "Volume")
_CUBIC_MILLIMETRE = Code("mm3", "UCUM", "cubic millimeter")
_SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
_IMAGE_REGION = Code("111030", "DCM", "Image Region")
_REFERENCED_SEGMENT = Code("121191", "DCM", "Referenced Segment")
_SOURCE_SERIES_FOR_SEGMENTATION = Code("121232", "DCM", "Source Series for Segmentation")

# highdicom's TID 1604 (cross-sectional) and TID 1603 (projection radiography) Image Library descriptors go to
# images of these modalities.
_CROSS_SECTIONAL = frozenset({"CT", "MR", "PT"})
_PROJECTION_RADIOGRAPHY = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})
_SIDES = {"right": _RIGHT, "left": _LEFT}


def measurement_report(
    finding: Finding, sources: Sequence[Dataset], segmentation: Dataset | None = None
) -> list[Dataset]:
    """The TID 1500 tree for ``finding`` as pydicom Datasets: a list holding its one root CONTAINER, the
    ``content`` of `PreliminaryComprehensive3DSR` (``check_inputs`` first: this trusts its arguments)."""
    return [to_dataset(measurement_tree(finding, sources, segmentation))]


def measurement_tree(finding: Finding, sources: Sequence[Dataset], segmentation: Dataset | None = None) -> Item:
    """The root CONTAINER of the TID 1500 tree for ``finding``, laid out as write/sr.py's docstring says."""
    model = finding.model
    referenced = referenced_sources(finding, sources)
    groups = [
        _classification_group(finding, referenced),
        *(
            _hotspot_group(finding, number, hotspot, sources[hotspot.source_index])
            for number, hotspot in enumerate(finding.hotspots, start=1)
        ),
        *_segment_groups(finding, segmentation),
    ]
    return _container(
        _REPORT,
        None,
        [
            _code_item(_LANGUAGE, _ENGLISH_US, _HAS_CONCEPT_MOD),
            *_device_observer(model),
            _code_item(_PROCEDURE_REPORTED, model.procedure, _HAS_CONCEPT_MOD),
            _image_library([source for _, source in referenced]),
            _container(_IMAGING_MEASUREMENTS, _CONTAINS, groups),
        ],
        template="1500",
    )


def referenced_sources(finding: Finding, sources: Sequence[Dataset]) -> list[tuple[int, Dataset]]:
    """The sources the document references image by image (IMAGE items, Image Library), with their index.

    A planar job: every source. A volume (CT) job: the key slice of each region, or with none the middle
    slice of the series the network segmented. Every slice of two CT series would make a tree of thousands
    of items, seconds to build, that a reader scrolls past; every input stays in the evidence sequences, and
    the SEG references every slice it segments."""
    volume = finding.volume
    if volume is None:
        return list(enumerate(sources))
    position = {str(ds.SOPInstanceUID): index for index, ds in enumerate(sources)}
    if volume.regions:
        slices = [volume.centre_slice(region.number) for region in volume.regions]
    else:
        slices = [len(volume.slice_sop_uids) // 2]
    uids = [volume.slice_sop_uids[index] for index in dict.fromkeys(slices)]
    missing = [uid for uid in uids if uid not in position]
    if missing:
        raise ValueError(f"the mask is drawn on slice {missing[0]}, which is not among the sources")
    return [(position[uid], sources[position[uid]]) for uid in uids]


def device_uid(model: ModelSpec) -> str:
    """A UID that stays the same for the same weights and changes when the model is retrained."""
    return str(generate_uid(entropy_srcs=[model.name, model.version, model.weights_sha256]))


def algorithm_name(model: ModelSpec) -> str:
    """TID 4019 Algorithm Name: the registry name, marked when the weights were trained on synthetic data."""
    return f"{model.name} (synthetic-trained)" if model.trained_on_synthetic else model.name


def algorithm_parameters(model: ModelSpec) -> list[str]:
    """TID 4019 Algorithm Parameters: the weights' hash, and the synthetic caveat when it applies."""
    parameters = [f"weights-sha256={model.weights_sha256}"]
    if model.trained_on_synthetic:
        parameters.append("trained on synthetic data only; no clinical accuracy claimed")
    return parameters


def _classification_group(finding: Finding, referenced: Sequence[tuple[int, Dataset]]) -> Item:
    model = finding.model
    return _measurement_group(
        "1501",
        f"{model.name} classification",
        generate_uid(),
        finding,
        _finding_site(model.finding_site),
        [_probability(model, label.key, float(finding.probabilities[label.key])) for label in model.labels],
        [
            _image_item(_SOURCE_OF_MEASUREMENT, source, _CONTAINS, frames=_frames_for(finding, index, source))
            for index, source in referenced
        ],
    )


def _hotspot_group(finding: Finding, number: int, hotspot: Hotspot, source: Dataset) -> Item:
    """TID 1410: the hot spot as a POINT on its source frame, with the predicted class and its probability."""
    model = finding.model
    site = _finding_site(model.finding_site)
    if hotspot.site is not None:  # the network placed the point, e.g. on a gland's side and level
        site = _finding_site(hotspot.site, hotspot.laterality, hotspot.site_modifier)
    point = _scoord_point(
        _IMAGE_REGION,
        hotspot.column,
        hotspot.row,
        _CONTAINS,
        _image_item(_SOURCE, source, _SELECTED_FROM, frames=[hotspot.frame]),
    )
    return _measurement_group(
        "1410",
        f"{hotspot.label} {number} (heat {hotspot.score:.2f})",
        generate_uid(),
        finding,
        site,
        [_probability(model, finding.predicted, float(finding.probabilities[finding.predicted]))],
        [point],
    )


def _segment_groups(finding: Finding, segmentation: Dataset | None) -> list[Item]:
    """One TID 1411 group per region of ``finding.volume``: its segment (same Tracking UID as in the SEG),
    volume, side (as Finding Site laterality), centre (in the tracking identifier) and probability."""
    if segmentation is None or finding.volume is None:
        return []
    tracking = {int(item.SegmentNumber): str(item.TrackingUID) for item in segmentation.SegmentSequence}
    groups = []
    for region in finding.volume.regions:
        if region.number not in tracking:
            raise ValueError(f"region {region.number} has no segment in the SEG {segmentation.SOPInstanceUID}")
        groups.append(_segment_group(finding, region, tracking[region.number], segmentation, finding.volume.series_uid))
    return groups


def _segment_group(finding: Finding, region: Region, tracking_uid: str, segmentation: Dataset, series_uid: str) -> Item:
    x, y, z = region.centre_mm
    return _measurement_group(
        "1411",
        f"Region {region.number} {region.side} at ({x:.0f}, {y:.0f}, {z:.0f}) mm LPS"[:64],
        tracking_uid,
        finding,
        _finding_site(finding.model.finding_site, _SIDES.get(region.side)),
        [
            _num_item(_VOLUME, region.volume_mm3, _CUBIC_MILLIMETRE, _CONTAINS),
            _probability(finding.model, finding.predicted, region.probability),
        ],
        [
            _image_item(_REFERENCED_SEGMENT, segmentation, _CONTAINS, segment=region.number),
            _uidref_item(_SOURCE_SERIES_FOR_SEGMENTATION, series_uid, _CONTAINS),
        ],
    )


def _measurement_group(
    template: str,
    identifier: str,
    tracking_uid: str,
    finding: Finding,
    site: Item,
    measurements: Iterable[Item],
    references: Iterable[Item],
) -> Item:
    """TID 1501/1410/1411 in highdicom's item order: the references (source images, region or segment) come
    after the measurements."""
    return _container(
        _MEASUREMENT_GROUP,
        _CONTAINS,
        [
            _text_item(_TRACKING_IDENTIFIER, identifier, _HAS_OBS_CONTEXT),
            _uidref_item(_TRACKING_UID, tracking_uid, _HAS_OBS_CONTEXT),
            _code_item(_FINDING, finding.model.label(finding.predicted).code, _CONTAINS),
            site,
            *_algorithm_identification(finding.model),
            *measurements,
            *references,
        ],
        template=template,
    )


def _probability(model: ModelSpec, key: str, value: float) -> Item:
    """``NUM Probability = <value * 100> %`` with the class it is for as a HAS CONCEPT MOD Finding."""
    which = _code_item(_FINDING, model.label(key).code, _HAS_CONCEPT_MOD)
    return _num_item(_PROBABILITY, value * 100.0, _PERCENT, _CONTAINS, which)


def _finding_site(location: Code, laterality: Code | None = None, modifier: Code | None = None) -> Item:
    children = []
    if laterality is not None:
        children.append(_code_item(_LATERALITY, laterality, _HAS_CONCEPT_MOD))
    if modifier is not None:
        children.append(_code_item(_TOPOGRAPHICAL_MODIFIER, modifier, _HAS_CONCEPT_MOD))
    return _code_item(_FINDING_SITE, location, _HAS_CONCEPT_MOD, *children)


def _algorithm_identification(model: ModelSpec) -> list[Item]:
    """TID 4019 for ``model``: registry name, version, manufacturer, weights hash (and the synthetic caveat)."""
    return [
        _text_item(_ALGORITHM_NAME, algorithm_name(model), _HAS_CONCEPT_MOD),
        _text_item(_ALGORITHM_VERSION, model.version, _HAS_CONCEPT_MOD),
        _text_item(_ALGORITHM_MANUFACTURER, MANUFACTURER, _HAS_CONCEPT_MOD),
        *(_text_item(_ALGORITHM_PARAMETERS, parameter, _HAS_CONCEPT_MOD) for parameter in algorithm_parameters(model)),
        _code_item(_ALGORITHM_FAMILY, _ARTIFICIAL_INTELLIGENCE, _HAS_CONCEPT_MOD),
    ]


def _device_observer(model: ModelSpec) -> list[Item]:
    """TID 1002 with TID 1004: the model as the device observer."""
    return [
        _code_item(_OBSERVER_TYPE, _DEVICE, _HAS_OBS_CONTEXT),
        _uidref_item(_DEVICE_UID, device_uid(model), _HAS_OBS_CONTEXT),
        _text_item(_DEVICE_NAME, model.name, _HAS_OBS_CONTEXT),
        _text_item(_DEVICE_MANUFACTURER, MANUFACTURER, _HAS_OBS_CONTEXT),
        _text_item(_DEVICE_MODEL_NAME, model.title[:64], _HAS_OBS_CONTEXT),
    ]


def _image_library(images: Sequence[Dataset]) -> Item:
    """TID 1600: one Image Library Group per modality and frame of reference, in first-seen order.

    highdicom means to put the shared frame of reference into each group, but tests for it on the group's
    first IMAGE item, which never has one, so its groups hold only their images; so do these."""
    groups: dict[tuple[object, ...], list[Item]] = {}
    for image in images:
        modality = _modality(str(image.SOPClassUID))
        key: tuple[object, ...] = (modality,)
        if "FrameOfReferenceUID" in image:
            key = (modality, str(image.FrameOfReferenceUID))
        entry = _image_item(_SOURCE, image, _CONTAINS, children=_library_descriptors(image, modality))
        groups.setdefault(key, []).append(entry)
    return _container(
        _IMAGE_LIBRARY,
        _CONTAINS,
        [_container(_IMAGE_LIBRARY_GROUP, _CONTAINS, entries) for entries in groups.values()],
    )


def _library_descriptors(image: Dataset, modality: Code) -> list[Item]:
    """TID 1602 as highdicom fills it: modality, frame of reference, matrix size, then per modality family
    TID 1604 (cross-sectional) or TID 1603 (projection radiography)."""
    descriptors = [_code_item(_MODALITY, modality, _HAS_ACQ_CONTEXT)]
    if "FrameOfReferenceUID" in image:
        descriptors.append(_uidref_item(_FRAME_OF_REFERENCE_UID, image.FrameOfReferenceUID, _HAS_ACQ_CONTEXT))
    descriptors.append(_num_item(_PIXEL_DATA_ROWS, image.Rows, _PIXELS, _HAS_ACQ_CONTEXT))
    descriptors.append(_num_item(_PIXEL_DATA_COLUMNS, image.Columns, _PIXELS, _HAS_ACQ_CONTEXT))
    if image.Modality in _CROSS_SECTIONAL:
        descriptors.extend(_cross_sectional_descriptors(image))
    elif image.Modality in _PROJECTION_RADIOGRAPHY:
        descriptors.extend(_projection_descriptors(image))
    return descriptors


def _cross_sectional_descriptors(image: Dataset) -> list[Item]:
    spacing, position, orientation = image.PixelSpacing, image.ImagePositionPatient, image.ImageOrientationPatient
    descriptors = [
        _num_item(_HORIZONTAL_PIXEL_SPACING, spacing[1], _MILLIMETRE, _HAS_ACQ_CONTEXT),
        _num_item(_VERTICAL_PIXEL_SPACING, spacing[0], _MILLIMETRE, _HAS_ACQ_CONTEXT),
        _num_item(_SLICE_THICKNESS, image.SliceThickness, _MILLIMETRE, _HAS_ACQ_CONTEXT),
        *(_num_item(name, position[axis], _MILLIMETRE, _HAS_ACQ_CONTEXT) for axis, name in enumerate(_IMAGE_POSITION)),
        *(
            _num_item(name, orientation[axis], _DIRECTION_COSINE, _HAS_ACQ_CONTEXT)
            for axis, name in enumerate(_IMAGE_ORIENTATION)
        ),
    ]
    if "SpacingBetweenSlices" in image:
        descriptors.append(
            _num_item(_SPACING_BETWEEN_SLICES, image.SpacingBetweenSlices, _MILLIMETRE, _HAS_ACQ_CONTEXT)
        )
    return descriptors


def _projection_descriptors(image: Dataset) -> list[Item]:
    orientation, spacing = image.PatientOrientation, image.ImagerPixelSpacing
    return [
        _text_item(_PATIENT_ORIENTATION_ROW, orientation[0], _HAS_ACQ_CONTEXT),
        _text_item(_PATIENT_ORIENTATION_COLUMN, orientation[1], _HAS_ACQ_CONTEXT),
        _num_item(_HORIZONTAL_PIXEL_SPACING, spacing[1], _MILLIMETRE, _HAS_ACQ_CONTEXT),
        _num_item(_VERTICAL_PIXEL_SPACING, spacing[0], _MILLIMETRE, _HAS_ACQ_CONTEXT),
    ]


@functools.cache
def _modality(sop_class_uid: str) -> Code:
    """The CID 29/32 code highdicom gives an image of this SOP class (ValueError for a class it does not map).
    Its own lookup rebuilds a table of 130 pydicom codes on every call; its answer never changes. The lookup is
    private to highdicom: the pin in pyproject.toml and tests/test_write_sr_content.py guard its use."""
    if sop_class_uid in unlisted_classes.MODALITIES:
        return unlisted_classes.MODALITIES[sop_class_uid]
    code = _get_coded_modality(sop_class_uid)
    return Code(code.value, code.scheme_designator, code.meaning)


def _frames_for(finding: Finding, index: int, source: Dataset) -> list[int] | None:
    """The frames the network looked at, for multi-frame sources; None lets the reference cover all frames."""
    if not finding.source_frames or int(source.get("NumberOfFrames", 1) or 1) < 2:
        return None
    panels = sorted({panel.frame for panel in finding.panels if panel.source_index == index})
    return panels or [finding.source_frames[index]]


# Content items by value type (PS3.3 C.17.3), with the elements highdicom's ContentItem classes set.


def _container(name: Code, relationship: str | None, children: Sequence[Item], template: str | None = None) -> Item:
    elements: dict[str, Any] = {"ContinuityOfContent": "CONTINUOUS"}
    if template is not None:
        elements["ContentTemplateSequence"] = [_elements(MappingResource="DCMR", TemplateIdentifier=template)]
    return _item("CONTAINER", name, relationship, *children, **elements)


def _code_item(name: Code, value: Code, relationship: str, *children: Item) -> Item:
    return _item("CODE", name, relationship, *children, ConceptCodeSequence=[_code(value)])


def _text_item(name: Code, value: str, relationship: str) -> Item:
    return _item("TEXT", name, relationship, TextValue=str(value))


def _uidref_item(name: Code, uid: str, relationship: str) -> Item:
    return _item("UIDREF", name, relationship, UID=uid)


def _num_item(name: Code, value: float, unit: Code, relationship: str, *children: Item) -> Item:
    """NUM as highdicom writes it: the value as an auto-formatted DS string, and a float value also as FD
    (FloatingPointValue); an int (e.g. Rows) has no FD."""
    if not isinstance(value, int | float):
        raise TypeError(f"a NUM needs an int or float, got {value!r}")
    measured: dict[str, Any] = {
        "NumericValue": DS(value, auto_format=True),
        "MeasurementUnitsCodeSequence": [_code(unit)],
    }
    if isinstance(value, float):
        measured["FloatingPointValue"] = value
    return _item("NUM", name, relationship, *children, MeasuredValueSequence=[_elements(**measured)])


def _image_item(
    name: Code,
    image: Dataset,
    relationship: str,
    *,
    frames: list[int] | None = None,
    segment: int | None = None,
    children: Sequence[Item] = (),
) -> Item:
    reference: dict[str, Any] = {
        "ReferencedSOPClassUID": str(image.SOPClassUID),
        "ReferencedSOPInstanceUID": str(image.SOPInstanceUID),
    }
    if frames is not None and reference["ReferencedSOPClassUID"] not in unlisted_classes.SINGLE_FRAME:
        reference["ReferencedFrameNumber"] = frames
    if segment is not None:
        reference["ReferencedSegmentNumber"] = segment
    return _item("IMAGE", name, relationship, *children, ReferencedSOPSequence=[_elements(**reference)])


def _scoord_point(name: Code, column: float, row: float, relationship: str, image: Item) -> Item:
    """SCOORD POINT at (column, row) in image pixels, SELECTED FROM ``image``; Graphic Data is FL."""
    return _item("SCOORD", name, relationship, image, GraphicType="POINT", GraphicData=[float(column), float(row)])


def _item(value_type: str, name: Code, relationship: str | None, *children: Item, **elements: Any) -> Item:
    elements["ValueType"] = value_type
    elements["ConceptNameCodeSequence"] = [_code(name)]
    if relationship is not None:
        elements["RelationshipType"] = relationship
    if children:
        elements["ContentSequence"] = list(children)
    return Item(elements)


def _code(code: Code) -> Item:
    """A code sequence item as highdicom's CodedConcept writes it: values over 16 characters go to Long Code
    Value, or URN Code Value for a URN or URL."""
    if len(code.meaning) > 64:
        raise ValueError(f"code meaning {code.meaning!r} is longer than the 64 characters LO holds")
    value_keyword = "CodeValue"
    if len(code.value) > 16:
        value_keyword = "URNCodeValue" if code.value.startswith("urn") or "://" in code.value else "LongCodeValue"
    return _elements(**{value_keyword: code.value, "CodingSchemeDesignator": code.scheme, "CodeMeaning": code.meaning})


def _elements(**elements: Any) -> Item:
    return Item(elements)
