"""The SEG as highdicom's Segmentation constructor builds it: the reference that tests/test_write_seg.py holds
write/seg.py's direct builder (write/seg_document.py) equal to.

This was write/seg.py's builder until the constructor's 190-600 ms for a clinical-size CT moved it out of the
product. It takes the same choices from the product (segment descriptions, software versions, description), so
a comparison is about the data set, not about those choices."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import scintnode
from scintnode.finding import Finding
from scintnode.write.seg import SEG_SERIES_NUMBER, _volume_with_regions, segment_descriptions, source_slices
from scintnode.write.sr import MANUFACTURER, contributing_equipment, series_description


def build_segmentation(
    finding: Finding,
    sources: Sequence[Dataset],
    *,
    series_uid: str | None = None,
    series_number: int = SEG_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """The BINARY SEG of `finding.volume` over its source series (one segment per region, in region order)."""
    volume = _volume_with_regions(finding)
    slices = source_slices(volume, sources)
    model = finding.model
    return hd.seg.Segmentation(
        source_images=slices,
        pixel_array=volume.labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(finding),
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=[f"scintnode {scintnode.__version__}", f"{model.name} {model.version}"],
        device_serial_number="none",
        omit_empty_frames=True,
        series_description=series_description("AI segmentation", model),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(model)],
    )
