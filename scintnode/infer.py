"""Infer: runs one network on one job's source images and builds the DICOM results it asked for.

Takes values and returns values (datasets in, datasets out); the pipeline does the storing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import generate_uid

from scintnode.finding import Finding
from scintnode.models.registry import Network
from scintnode.write.sc import build_heatmap_sc
from scintnode.write.sr import build_report

KNOWN_OUTPUTS = ("sr", "sc")


class InputError(ValueError):
    """The job's images cannot be used by its network (wrong kind, undecodable pixels); not retried."""


@dataclass(frozen=True)
class JobResult:
    finding: Finding
    outputs: tuple[tuple[str, Dataset], ...]  # (kind, dataset) in the order they should be sent
    inference_ms: float
    total_ms: float


def run_network(network: Network, sources: Sequence[Dataset], outputs: Sequence[str]) -> JobResult:
    started = time.perf_counter()
    unknown = [kind for kind in outputs if kind not in KNOWN_OUTPUTS]
    if unknown:
        raise InputError(f"unknown output kind(s) {unknown}; known: {', '.join(KNOWN_OUTPUTS)}")
    try:
        finding = network.run(sources)
    except (ValueError, NotImplementedError, AttributeError, KeyError) as exc:
        raise InputError(f"{network.spec.name} cannot use these images: {exc}") from exc
    built: list[tuple[str, Dataset]] = []
    if "sr" in outputs:
        built.append(("sr", build_report(finding, sources)))
    if "sc" in outputs:
        series_uid = generate_uid()  # all heatmaps of one job form one series
        for index in range(len(finding.heatmaps)):
            built.append(
                ("sc", build_heatmap_sc(finding, sources, index, series_uid=series_uid, instance_number=index + 1))
            )
    total_ms = (time.perf_counter() - started) * 1000
    return JobResult(finding, tuple(built), finding.inference_ms, total_ms)
