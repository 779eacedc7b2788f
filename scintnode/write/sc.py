"""Writes the Grad-CAM heatmap of one source as an RGB Secondary Capture with the result burned in.

The fallback every PACS can show (dicom-conventions.md §1.3, §4.3): sent beside the SR, never instead of it.

Geometry: the picture is the source frame scaled by an integer factor with a text banner above it, so it is
not a measuring surface. No Pixel Spacing is written (SC's Pixel Spacing is optional; a copied value would
be wrong by the scale factor). Patient Orientation is kept, since scaling and the banner change neither
direction: it is derived from the View Code of the frame shown, else copied from the source.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from scintnode.finding import Finding
from scintnode.phantoms.nm import VIEWS
from scintnode.write import unlisted_classes
from scintnode.write.equipment import acquisition_first
from scintnode.write.overlay import PanelPicture, render_overlay, render_panels
from scintnode.write.sc_document import HeatmapSC
from scintnode.write.sop_common import Placement
from scintnode.write.sr import MANUFACTURER, check_inputs, contributing_equipment, series_description
from scintnode.write.unlisted_classes import as_listed_class

SC_SERIES_NUMBER = 9002
UNVERIFIED = "AI result, unverified"
SYNTHETIC = "synthetic-trained model - no clinical accuracy claimed"

_ORIENTATION_BY_VIEW_CODE = {
    code: view.orientation for view in VIEWS.values() for code in (view.term.sct, view.term.srt)
}


def build_heatmap_sc(
    finding: Finding,
    sources: Sequence[Dataset],
    source_index: int,
    *,
    series_uid: str | None = None,
    series_number: int = SC_SERIES_NUMBER,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    method: str = "Grad-CAM heatmap",
) -> Dataset:
    """The heatmap SC for ``sources[source_index]``, placed in the study of ``sources[0]``.

    ``method`` names what is drawn over the image (burned in and in Derivation Description)."""
    check_inputs(finding, sources)
    if not 0 <= source_index < len(sources):
        raise ValueError(f"source_index {source_index} is outside 0..{len(sources) - 1}")
    if len(finding.display_images) != len(sources) or len(finding.heatmaps) != len(sources):
        raise ValueError(
            f"the finding has {len(finding.display_images)} display image(s) and {len(finding.heatmaps)} "
            f"heatmap(s) for {len(sources)} source(s); a heatmap SC needs one of each per source"
        )
    source = sources[source_index]
    frame = finding.source_frames[source_index] if finding.source_frames else 1
    image = finding.display_images[source_index]
    panels = [panel for panel in finding.panels if panel.source_index == source_index]
    if len(panels) > 1:
        frames = [panel.frame for panel in panels]
        picture = render_panels(
            [
                PanelPicture(
                    p.display, p.heatmap, p.caption, _markers(finding, source_index, source, p.display.shape, p.frame)
                )
                for p in panels
            ],
            overlay_lines(finding, frames, method),
        )
        orientations = {patient_orientation(source, f) for f in frames}
        # views seen from opposite sides run left-right in opposite directions: no one value is true
        orientation = orientations.pop() if len(orientations) == 1 else None
    else:
        frames = [frame]
        picture = render_overlay(
            image,
            finding.heatmaps[source_index],
            overlay_lines(finding, frame, method),
            markers=_markers(finding, source_index, source, image.shape, frame),
        )
        orientation = patient_orientation(source, frame)
    model = finding.model
    first = sources[0]
    placement = Placement(
        series_uid or generate_uid(),
        series_number,
        sop_instance_uid or generate_uid(),
        instance_number,
        MANUFACTURER,
        series_description("AI heatmap", model),
    )
    sc = HeatmapSC(
        first,
        picture,
        placement,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contributing_equipment=acquisition_first(first, [contributing_equipment(model)]),
    )
    sc.PatientOrientation = list(orientation) if orientation else None
    sc.copy_patient_and_study_information(as_listed_class(first))  # as the source has them, as the SR does
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    # a frame number on an image of a single-frame class (a CT slice, a retired-class NM image) is an error
    if "NumberOfFrames" in source and source.SOPClassUID not in unlisted_classes.SINGLE_FRAME:
        reference.ReferencedFrameNumber = frames if len(frames) > 1 else frame
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [reference]
    sc.BurnedInAnnotation = "YES"
    synthetic = ", synthetic-trained" if model.trained_on_synthetic else ""
    sc.DerivationDescription = (
        f"{model.name} {model.version}{synthetic}: {method} over {_frame_words(frames)} "
        f"of {source.SOPInstanceUID}; result text burned in"
    )[:1024]
    return sc


def overlay_lines(finding: Finding, frame: int | Sequence[int], method: str = "Grad-CAM heatmap") -> list[str]:
    """The text burned into the SC: class and score first, the caveats always."""
    model = finding.model
    predicted = model.label(finding.predicted)
    others = ", ".join(
        f"{label.display} {100.0 * finding.probabilities[label.key]:.1f}%"
        for label in model.labels
        if label.key != finding.predicted
    )
    lines = [
        f"{predicted.display}: {100.0 * finding.probabilities[finding.predicted]:.1f}%",
        f"Others: {others}" if others else "",
        f"{UNVERIFIED} - {method}, {_frame_words([frame] if isinstance(frame, int) else frame)}",
        f"{model.title} v{model.version}",
    ]
    if model.trained_on_synthetic:
        lines.append(SYNTHETIC)
    return [line for line in lines if line]


def patient_orientation(source: Dataset, frame: int) -> tuple[str, str] | None:
    """Row and column directions of ``frame``: from its detector's View Code, else the source's own value."""
    view_code = _view_code(source, frame)
    if view_code in _ORIENTATION_BY_VIEW_CODE:
        return _ORIENTATION_BY_VIEW_CODE[view_code]
    copied = source.get("PatientOrientation")
    if copied is not None and len(copied) == 2:
        return (str(copied[0]), str(copied[1]))
    return None


def _view_code(source: Dataset, frame: int) -> str | None:
    detectors = source.get("DetectorInformationSequence") or []
    vector = source.get("DetectorVector")
    # pydicom gives a single-valued element as a bare int, several as a list
    vector = [vector] if isinstance(vector, int) else list(vector or [])
    detector = int(vector[frame - 1]) if 0 < frame <= len(vector) else 1
    for holder in (detectors[detector - 1] if 0 < detector <= len(detectors) else None, source):
        views = holder.get("ViewCodeSequence") if holder is not None else None
        if views:
            return str(views[0].get("CodeValue", "")) or None
    return None


def _frame_words(frames: Sequence[int]) -> str:
    return f"frame {frames[0]}" if len(frames) == 1 else "frames " + ", ".join(str(f) for f in frames)


def _markers(
    finding: Finding, source_index: int, source: Dataset, shape: tuple[int, ...], frame: int
) -> list[tuple[float, float]]:
    """Hot spots of this source's ``frame``, from source pixel space to display-image space."""
    rows, columns = int(source.get("Rows", shape[0])), int(source.get("Columns", shape[1]))
    return [
        (hotspot.column * shape[1] / columns, hotspot.row * shape[0] / rows)
        for hotspot in finding.hotspots
        if hotspot.source_index == source_index and hotspot.frame == frame
    ]
