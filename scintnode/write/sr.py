"""Writes a Finding as a Comprehensive 3D SR (TID 1500) that goes back to PACS beside the heatmap SC.

Input: the Finding infer produced and the source datasets it was computed on; output: a pydicom Dataset.
sr_content.py builds the content tree, sr_document.py the document around it, which holds the content
encoded (content_items.py): pydicom parses it only if someone reads ``ContentSequence``.

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
  Finding, and its probability (the only text OHIF draws beside a point). Its Finding Site is the organ, or
  the site the network gave the point (e.g. a parathyroid gland's side and level).
- With a SEG, one TID 1411 group per region of the mask: its segment (same Tracking UID as in the SEG) and
  source series, the predicted class, the organ with the region's side as laterality, its volume in mm3
  and probability.

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
from scintnode.finding import Finding
from scintnode.models.spec import ModelSpec
from scintnode.write.sr_content import MANUFACTURER as MANUFACTURER  # re-exported: sc.py and seg.py use it too
from scintnode.write.sr_content import measurement_tree
from scintnode.write.sr_document import PreliminaryComprehensive3DSR

SR_SERIES_NUMBER = 9001
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
    report = measurement_tree(finding, sources, segmentation)
    return PreliminaryComprehensive3DSR(
        [*sources, *other_evidence, *([segmentation] if segmentation is not None else [])],
        [report],
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        previous_versions=predecessors,
        contributing_equipment=[contributing_equipment(finding.model)],
        series_description=series_description("AI report", finding.model),
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


def contributing_equipment(model: ModelSpec) -> hd.ContributingEquipment:
    """Our entry in Contributing Equipment: scintnode running ``model``."""
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=[f"scintnode {scintnode.__version__}", f"{model.name} {model.version}"],
        contribution_description=f"{model.title}: automated result, not verified by a physician"[:1024],
    )


def series_description(kind: str, model: ModelSpec) -> str:
    """'AI report (unverified) - <title>' within the 64 characters LO allows; says synthetic when it is."""
    status = "unverified, synthetic-trained" if model.trained_on_synthetic else "unverified"
    return f"{kind} ({status}) - {model.title}"[:64]
