"""Infer: runs one network on one job's source images and builds and encodes the DICOM results it asked for.

Takes values and returns values (datasets in; datasets and their file bytes out); the pipeline does the
storing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import generate_uid

from scintnode.finding import Finding
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.models.registry import Network
from scintnode.write.part10 import encode_file
from scintnode.write.sc import build_heatmap_sc
from scintnode.write.seg import build_key_image_sc, build_segmentation
from scintnode.write.sr import build_report

KNOWN_OUTPUTS = ("sr", "sc", "seg")


class InputError(ValueError):
    """The job's images cannot be used by its network (wrong kind, undecodable pixels); not retried."""


@dataclass(frozen=True)
class ResultFile:
    kind: str  # "sr", "sc" or "seg"
    dataset: Dataset
    encoded: bytes  # the DICOM file, file meta included


@dataclass(frozen=True)
class JobResult:
    finding: Finding
    outputs: tuple[ResultFile, ...]  # in the order they should be sent
    inference_ms: float  # what the network timed itself: its forward pass(es)
    explain_ms: float  # its Grad-CAM
    total_ms: float
    writing_ms: float  # building and encoding the SR, SC and SEG; the rest is decode, pre- and postprocessing


def run_network(
    network: Network,
    sources: Sequence[Dataset],
    outputs: Sequence[str],
    *,
    slots: Sequence[str] | None = None,
    result_study_uid: str | None = None,
    predecessors: Sequence[Dataset] = (),
) -> JobResult:
    """Run `network`; with `slots` (an episode) the network gets each input's slot name too.

    Results go into `result_study_uid` (default: the first source's study); inputs from other studies
    are referenced as other evidence; `predecessors` are earlier SRs the new one supersedes."""
    started = time.perf_counter()
    unknown = [kind for kind in outputs if kind not in KNOWN_OUTPUTS]
    if unknown:
        raise InputError(f"unknown output kind(s) {unknown}; known: {', '.join(KNOWN_OUTPUTS)}")
    try:
        if slots is not None:
            run_episode = getattr(network, "run_episode", None)
            if run_episode is None:
                raise InputError(f"{network.spec.name} takes single inputs, not an episode's slots")
            finding: Finding = run_episode(slots, sources)
        else:
            finding = network.run(sources)
    except (ValueError, NotImplementedError, AttributeError, KeyError) as exc:
        raise InputError(f"{network.spec.name} cannot use these images: {exc}") from exc
    writing_started = time.perf_counter()
    finding, ordered = _result_study_first(finding, sources, result_study_uid)
    built: list[tuple[str, Dataset]] = []
    # A mask with regions becomes a SEG first, so the SR can reference its segments (none found: no SEG).
    regions = finding.volume is not None and bool(finding.volume.regions)
    segmentation = build_segmentation(finding, ordered) if "seg" in outputs and regions else None
    if segmentation is not None:
        built.append(("seg", segmentation))
    if "sr" in outputs:
        built.append(("sr", build_report(finding, ordered, predecessors=predecessors, segmentation=segmentation)))
    if "sc" in outputs:
        series_uid = generate_uid()  # all heatmaps of one job form one series
        for index in range(len(finding.heatmaps)):
            built.append(
                ("sc", build_heatmap_sc(finding, ordered, index, series_uid=series_uid, instance_number=index + 1))
            )
        if regions:
            built.append(("sc", build_key_image_sc(finding, ordered, series_uid=series_uid)))
    files = tuple(ResultFile(kind, ds, _encoded(ds)) for kind, ds in built)
    finished = time.perf_counter()
    return JobResult(
        finding,
        files,
        finding.inference_ms,
        finding.explain_ms,
        (finished - started) * 1000,
        (finished - writing_started) * 1000,
    )


def _encoded(ds: Dataset) -> bytes:
    # highdicom names itself in the file meta; the file is scintnode's
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return encode_file(ds)


def _result_study_first(
    finding: Finding, sources: Sequence[Dataset], study_uid: str | None
) -> tuple[Finding, list[Dataset]]:
    """Reorder the sources so those of the result study come first (the writers place results in the study of
    the first source), and renumber everything in the finding that points at a source."""
    order = sorted(range(len(sources)), key=lambda i: (str(sources[i].StudyInstanceUID) != (study_uid or ""), i))
    if study_uid is None or order == list(range(len(sources))):
        return finding, list(sources)
    new_index = {old: new for new, old in enumerate(order)}

    def permuted(values: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(values[old] for old in order if old < len(values))

    moved = dataclasses.replace(
        finding,
        hotspots=tuple(dataclasses.replace(h, source_index=new_index[h.source_index]) for h in finding.hotspots),
        display_images=permuted(finding.display_images),  # type: ignore[arg-type]
        heatmaps=permuted(finding.heatmaps),  # type: ignore[arg-type]
        source_frames=permuted(finding.source_frames),  # type: ignore[arg-type]
        panels=tuple(dataclasses.replace(p, source_index=new_index[p.source_index]) for p in finding.panels),
    )
    return moved, [sources[i] for i in order]
