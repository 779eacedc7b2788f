"""The SR content tree as highdicom's TID 1500 template classes build it: the reference that
tests/test_write_sr_content.py holds write/sr_content.py's plain-Dataset tree equal to.

This was write/sr.py's builder until the templates' 8.5 ms per thyroid report moved it out of the product.
It takes the same choices from the product (which images, which frames, the device UID, the algorithm's name
and parameters), so a comparison is about the tree, not about those choices."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from scintnode.finding import Finding, Hotspot
from scintnode.models.spec import Code, ModelSpec
from scintnode.write.sr_content import (
    MANUFACTURER,
    _frames_for,
    algorithm_name,
    algorithm_parameters,
    device_uid,
    referenced_sources,
)


def measurement_report(
    finding: Finding, sources: Sequence[Dataset], segmentation: Dataset | None = None
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree for ``finding``, laid out as write/sr.py's docstring says (``check_inputs``
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


def algorithm_identification(model: ModelSpec) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for ``model``: registry name, version, weights hash (and the synthetic caveat)."""
    return hd.sr.AlgorithmIdentification(
        name=algorithm_name(model),
        version=model.version,
        parameters=algorithm_parameters(model),
        family=codes.DCM.ArtificialIntelligence,
        manufacturer=MANUFACTURER,
    )


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


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
