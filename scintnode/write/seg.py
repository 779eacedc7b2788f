"""Writes a segmenting network's mask as a binary DICOM SEG on the CT series it was drawn on, and the key
image of its largest region as a Secondary Capture (through write/sc.py).

Input: a Finding with a `volume` (finding.VolumeMask) and the job's sources; output: pydicom Datasets.
One segment per region, coded (111002, SCT, "Parathyroid") under Anatomical Structure with the algorithm
(dicom-conventions.md §2.c, §4.3 item 4); the SR's TID 1411 groups reuse each segment's Tracking UID.
write/seg_document.py builds the SEG itself, in place of highdicom's slower Segmentation constructor."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import scintnode
from scintnode.finding import Finding, Hotspot, VolumeMask
from scintnode.models.ct_slices import slice_hounsfield
from scintnode.write.sc import build_heatmap_sc
from scintnode.write.seg_document import BinarySegmentation
from scintnode.write.sr import MANUFACTURER, contributing_equipment, series_description

SEG_SERIES_NUMBER = 9003
# Display colours in CIELab (OHIF converts them), one per segment in turn: yellow, cyan, magenta, orange.
_COLOURS = ((97.0, -21.0, 94.0), (91.0, -48.0, -14.0), (60.0, 98.0, -61.0), (75.0, 24.0, 79.0))


def build_segmentation(
    finding: Finding,
    sources: Sequence[Dataset],
    *,
    series_uid: str | None = None,
    series_number: int = SEG_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The BINARY SEG of `finding.volume` over its source series (one segment per region, in region order)."""
    volume = _volume_with_regions(finding)
    slices = source_slices(volume, sources)
    model = finding.model
    return BinarySegmentation(
        slices,
        volume.labels,
        volume.voxels_per_slice,
        segment_descriptions(finding),
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=[f"scintnode {scintnode.__version__}", f"{model.name} {model.version}"],
        device_serial_number="none",
        series_description=series_description("AI segmentation", model),
        contributing_equipment=[contributing_equipment(model)],
    )


def segment_descriptions(finding: Finding) -> list[hd.seg.SegmentDescription]:
    """One description per region of `finding.volume`, in region order, each with a fresh Tracking UID."""
    volume = _volume_with_regions(finding)
    model = finding.model
    synthetic = "synthetic-trained, " if model.trained_on_synthetic else ""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        parameters={"weights-sha256": model.weights_sha256},
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=region.number,
            segment_label=f"{region.label} ({region.side})"[:64],
            segmented_property_category=codes.cid7150.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(
                value=model.finding_site.value,
                scheme_designator=model.finding_site.scheme,
                meaning=model.finding_site.meaning,
            ),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"{region.label}, {synthetic}probability {100 * region.probability:.0f} %"[:64],
            display_color=hd.color.CIELabColor(*_COLOURS[(region.number - 1) % len(_COLOURS)]),
        )
        for region in volume.regions
    ]


def source_slices(volume: VolumeMask, sources: Sequence[Dataset]) -> list[Dataset]:
    """The source datasets under the mask's slices, in mask order; ValueError naming what is missing."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [uid for uid in volume.slice_sop_uids if uid not in by_uid]
    if missing:
        raise ValueError(f"the mask is drawn on {len(missing)} slice(s) not among the sources, e.g. {missing[0]}")
    if volume.labels.shape[0] != len(volume.slice_sop_uids):
        raise ValueError(f"mask has {volume.labels.shape[0]} slices for {len(volume.slice_sop_uids)} source slices")
    return [by_uid[uid] for uid in volume.slice_sop_uids]


def build_key_image_sc(
    finding: Finding,
    sources: Sequence[Dataset],
    *,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """An SC of the slice through the largest region's middle, the region in colour and its centre ringed."""
    volume = _volume_with_regions(finding)
    slices = source_slices(volume, sources)
    largest = max(volume.regions, key=lambda region: region.volume_mm3)
    index = volume.centre_slice(largest.number)
    inside = volume.labels[index] == largest.number
    source = slices[index]
    rows, columns = np.nonzero(inside)
    low, high = volume.display_window_hu
    hu = slice_hounsfield(source)
    key = dataclasses.replace(
        finding,
        hotspots=(
            Hotspot(0, 1, float(columns.mean()) + 0.5, float(rows.mean()) + 0.5, largest.probability, largest.label),
        ),
        display_images=(np.clip((hu - low) / (high - low), 0.0, 1.0),),
        heatmaps=(inside.astype(np.float32),),
        source_frames=(1,),
    )
    sc = build_heatmap_sc(
        key, [source], 0, series_uid=series_uid, instance_number=instance_number, method="U-Net segmentation"
    )
    sc.DerivationDescription = (
        f"{finding.model.name} {finding.model.version}: {largest.label} ({largest.side}, "
        f"{largest.volume_mm3:.0f} mm3, probability {100 * largest.probability:.0f} %) on slice "
        f"{source.SOPInstanceUID}; result text burned in"
    )[:1024]
    return sc


def _volume_with_regions(finding: Finding) -> VolumeMask:
    volume = finding.volume
    if volume is None or not volume.regions:
        raise ValueError(f"{finding.model.name} found no region: there is no mask to write")
    numbers = sorted(region.number for region in volume.regions)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"regions must be numbered 1..{len(numbers)}, got {numbers}")
    return volume
