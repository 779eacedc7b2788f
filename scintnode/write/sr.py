"""Writes a Finding as a Comprehensive 3D SR (TID 1500) that goes back to PACS beside the heatmap SC.

Input: the Finding infer produced and the source datasets it was computed on; output: a pydicom Dataset.

Document layout (dsrdump reads it top-down):

- TID 1500 root, device observer (our model), Procedure Reported = the imaging procedure analysed.
- TID 1600 Image Library: every source image; for a CT volume, the key slice of each region (all inputs
  stay in the evidence sequences, and the SEG references every slice).
- One TID 1501 group "<model name> classification": Finding = the predicted class, Finding Site = the
  organ, TID 4019 algorithm identification, IMAGE references to the same images, and one NUM per class:
  ``NUM (122157, DCM, "Probability") = 87.5 %`` with a HAS CONCEPT MOD child
  ``CODE (121071, DCM, "Finding") = <that class's code>``, so each probability reads
  "Probability 87.5 %, Finding: Graves disease". The unit is UCUM "%" (0-100) because viewers print it.
- One TID 1410 group per Grad-CAM hot spot: a POINT on the source image and frame, the predicted class as
  Finding, and its probability (the only text OHIF draws beside a point).

The algorithm (TID 4019) is named after the registry name, with " (synthetic-trained)" appended when the
weights were trained on synthetic data; its parameters are "weights-sha256=<hex>" and, when synthetic,
"trained on synthetic data only; no clinical accuracy claimed".
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import scintnode
from scintnode.finding import Finding, Hotspot
from scintnode.models.spec import Code, ModelSpec
from scintnode.write.sr_document import PreliminaryComprehensive3DSR

SR_SERIES_NUMBER = 9001
MANUFACTURER = "scintnode"
_PROBABILITY_TOLERANCE = 1e-3


def build_report(
    finding: Finding,
    sources: Sequence[Dataset],
    *,
    other_evidence: Sequence[Dataset] = (),
    predecessors: Sequence[Dataset] = (),
    series_uid: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    segmentation: Dataset | None = None,
) -> Dataset:
    """The SR for ``finding``, placed in the study of ``sources[0]`` (PRELIMINARY, UNVERIFIED).

    ``other_evidence``: images the result draws on that are not network inputs (typically from other
    studies); every evidence item is filed by study: the study of ``sources[0]`` goes to Current
    Requested Procedure Evidence, any other study to Pertinent Other Evidence. ``predecessors``: earlier SRs
    this one supersedes (Predecessor Documents Sequence). ``segmentation``: the SEG written from
    ``finding.volume``; each region gets a TID 1411 group referencing its segment, and the SEG is evidence.
    """
    check_inputs(finding, sources)
    report = measurement_report(finding, sources, segmentation)
    return PreliminaryComprehensive3DSR(
        [*sources, *other_evidence, *([segmentation] if segmentation is not None else [])],
        report,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        previous_versions=predecessors,
        contributing_equipment=[contributing_equipment(finding.model)],
        series_description=series_description("AI report", finding.model),
    )


def measurement_report(
    finding: Finding, sources: Sequence[Dataset], segmentation: Dataset | None = None
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree for ``finding``, laid out as this module's docstring says (``check_inputs``
    first: this trusts its arguments)."""
    model = finding.model
    algorithm = algorithm_identification(model)
    predicted = model.label(finding.predicted)
    site = hd.sr.FindingSite(anatomic_location=_concept(model.finding_site))
    predicted_code = _concept(predicted.code)
    referenced = referenced_sources(finding, sources)

    classification = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{model.name} classification"),
        finding_type=predicted_code,
        finding_sites=[site],
        algorithm_id=algorithm,
        measurements=[_probability(model, key, value) for key, value in _ordered(finding)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(
                source, referenced_frame_numbers=_frames_for(finding, index, source)
            )
            for index, source in referenced
        ],
    )
    hotspot_groups = [
        _hotspot_group(finding, number, hotspot, sources[hotspot.source_index], site, algorithm)
        for number, hotspot in enumerate(finding.hotspots, start=1)
    ]
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=device_uid(model),
                    name=model.name,
                    manufacturer_name=MANUFACTURER,
                    model_name=model.title[:64],
                ),
            )
        ),
        procedure_reported=_concept(model.procedure),
        imaging_measurements=[classification, *hotspot_groups, *_segment_groups(finding, segmentation, algorithm)],
        referenced_images=[source for _, source in referenced],
    )


def check_inputs(finding: Finding, sources: Sequence[Dataset]) -> None:
    """Raise ValueError, saying what is wrong, if ``finding`` does not fit its model or its sources."""
    model = finding.model
    keys = [label.key for label in model.labels]
    if not sources:
        raise ValueError("a result needs at least one source dataset (the first decides the study)")
    if finding.predicted not in keys:
        raise ValueError(f"predicted label {finding.predicted!r} is not one of {model.name}'s labels {keys}")
    if set(finding.probabilities) != set(keys):
        raise ValueError(f"probabilities are given for {sorted(finding.probabilities)}, expected exactly {keys}")
    values = np.array(list(finding.probabilities.values()), dtype=np.float64)
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        raise ValueError(f"probabilities must lie in 0..1, got {dict(finding.probabilities)}")
    if abs(values.sum() - 1.0) > _PROBABILITY_TOLERANCE:
        raise ValueError(f"probabilities must sum to 1, they sum to {values.sum():.4f}")
    for index, source in enumerate(sources):
        missing = [
            k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in source
        ]
        if missing:
            raise ValueError(f"source {index} lacks {', '.join(missing)}")
    for hotspot in finding.hotspots:
        if not 0 <= hotspot.source_index < len(sources):
            raise ValueError(f"hot spot refers to source {hotspot.source_index}, only {len(sources)} given")
        frames = int(sources[hotspot.source_index].get("NumberOfFrames", 1) or 1)
        if not 1 <= hotspot.frame <= frames:
            raise ValueError(f"hot spot frame {hotspot.frame} is outside 1..{frames} of source {hotspot.source_index}")
    if finding.source_frames and len(finding.source_frames) != len(sources):
        raise ValueError(f"{len(finding.source_frames)} source frames given for {len(sources)} sources")


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


def algorithm_identification(model: ModelSpec) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for ``model``: registry name, version, weights hash (and the synthetic caveat)."""
    parameters = [f"weights-sha256={model.weights_sha256}"]
    name = model.name
    if model.trained_on_synthetic:
        name = f"{model.name} (synthetic-trained)"
        parameters.append("trained on synthetic data only; no clinical accuracy claimed")
    return hd.sr.AlgorithmIdentification(
        name=name,
        version=model.version,
        parameters=parameters,
        family=codes.DCM.ArtificialIntelligence,
        manufacturer=MANUFACTURER,
    )


def contributing_equipment(model: ModelSpec) -> hd.ContributingEquipment:
    """Our entry in Contributing Equipment: scintnode running ``model``."""
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=[f"scintnode {scintnode.__version__}", f"{model.name} {model.version}"],
        contribution_description=f"{model.title}: automated result, not verified by a physician"[:1024],
    )


def device_uid(model: ModelSpec) -> str:
    """A UID that stays the same for the same weights and changes when the model is retrained."""
    return str(generate_uid(entropy_srcs=[model.name, model.version, model.weights_sha256]))


def series_description(kind: str, model: ModelSpec) -> str:
    """'AI report (unverified) - <title>' within the 64 characters LO allows; says synthetic when it is."""
    status = "unverified, synthetic-trained" if model.trained_on_synthetic else "unverified"
    return f"{kind} ({status}) - {model.title}"[:64]


def _ordered(finding: Finding) -> list[tuple[str, float]]:
    return [(label.key, float(finding.probabilities[label.key])) for label in finding.model.labels]


def _probability(model: ModelSpec, key: str, value: float) -> hd.sr.Measurement:
    measurement = hd.sr.Measurement(name=codes.DCM.Probability, value=value * 100.0, unit=codes.UCUM.Percent)
    which = hd.sr.CodeContentItem(
        name=codes.DCM.Finding,
        value=_concept(model.label(key).code),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
    )
    num = measurement[0]
    num.ContentSequence = hd.sr.ContentSequence([which])
    return measurement


def _hotspot_group(
    finding: Finding,
    number: int,
    hotspot: Hotspot,
    source: Dataset,
    site: hd.sr.FindingSite,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    model = finding.model
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[hotspot.column, hotspot.row]], dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=[hotspot.frame]),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"{hotspot.label} {number} (heat {hotspot.score:.2f})"
        ),
        referenced_region=region,
        finding_type=_concept(model.label(finding.predicted).code),
        finding_sites=[_hotspot_site(hotspot) or site],
        algorithm_id=algorithm,
        measurements=[_probability(model, finding.predicted, float(finding.probabilities[finding.predicted]))],
    )


def _hotspot_site(hotspot: Hotspot) -> hd.sr.FindingSite | None:
    """The hot spot's own site (e.g. a gland's side and level), when the network gave one."""
    if hotspot.site is None:
        return None
    return hd.sr.FindingSite(
        anatomic_location=_concept(hotspot.site),
        laterality=_concept(hotspot.laterality) if hotspot.laterality else None,
        topographical_modifier=_concept(hotspot.site_modifier) if hotspot.site_modifier else None,
    )


def _segment_groups(
    finding: Finding, segmentation: Dataset | None, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per region of ``finding.volume``: its segment (same Tracking UID as in the SEG),
    volume, side (as Finding Site laterality), centre (in the tracking identifier) and probability."""
    if segmentation is None or finding.volume is None:
        return []
    model = finding.model
    tracking = {int(item.SegmentNumber): str(item.TrackingUID) for item in segmentation.SegmentSequence}
    groups = []
    for region in finding.volume.regions:
        if region.number not in tracking:
            raise ValueError(f"region {region.number} has no segment in the SEG {segmentation.SOPInstanceUID}")
        x, y, z = region.centre_mm
        laterality = {"right": codes.SCT.Right, "left": codes.SCT.Left}.get(region.side)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking[region.number],
                    identifier=f"Region {region.number} {region.side} at ({x:.0f}, {y:.0f}, {z:.0f}) mm LPS"[:64],
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    segment_number=region.number,
                    source_series=hd.sr.SourceSeriesForSegmentation(finding.volume.series_uid),
                ),
                finding_type=_concept(model.label(finding.predicted).code),
                finding_sites=[
                    hd.sr.FindingSite(anatomic_location=_concept(model.finding_site), laterality=laterality)
                ],
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(name=codes.SCT.Volume, value=region.volume_mm3, unit=codes.UCUM.CubicMillimeter),
                    _probability(model, finding.predicted, region.probability),
                ],
            )
        )
    return groups


def _frames_for(finding: Finding, index: int, source: Dataset) -> list[int] | None:
    """The frames the network looked at, for multi-frame sources; None lets the reference cover all frames."""
    if not finding.source_frames or int(source.get("NumberOfFrames", 1) or 1) < 2:
        return None
    panels = sorted({panel.frame for panel in finding.panels if panel.source_index == index})
    return panels or [finding.source_frames[index]]


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
