"""`scintnode demo`: the whole path on one machine — synthetic studies in, SR and heatmap SC out in a real PACS.

Starts Orthanc (the PACS) and a node on free ports, sends synthetic thyroid studies of every class as a
modality would (DCMTK storescu), waits for the results to land in Orthanc and prints them per study."""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from scintnode.config import Settings
from scintnode.db import Job
from scintnode.demo_cases import CASES, DemoStudy
from scintnode.heap_reuse import keep_freed_memory_for_reuse
from scintnode.huge_pages import avoid_numpy_huge_pages
from scintnode.orthanc import OrthancServer, OrthancUnavailable
from scintnode.serve_cli import configure_logging
from scintnode.storescu import send_files
from scintnode.write.sr_content import MANUFACTURER

log = logging.getLogger("scintnode.demo")


@dataclass
class StudyOutcome:
    case: DemoStudy
    predicted: str = ""
    probabilities: dict[str, float] | None = None
    result_series: tuple[str, ...] = ()
    seconds_to_result: float | None = None
    inference_ms: float | None = None
    error: str = ""


def wait_for_results(pacs: OrthancServer, case: DemoStudy, deadline: float) -> tuple[str, ...] | None:
    """Poll the PACS until the study holds a series of every result modality the case expects, made by the
    case's network (a ParaNet episode's thyroid scan also gets the thyroid network's results, in that study)."""
    models: dict[str, str] = {}  # Orthanc series id -> the network that made it
    while time.monotonic() < deadline:
        series = [s for s in pacs.series_of_study(case.result_study_uid) if s.instance_ids]
        for s in series:
            if s.modality in case.result_modalities and s.orthanc_id not in models:
                models[s.orthanc_id] = pacs.contributing_model(s.instance_ids[0], MANUFACTURER)
        found = {
            s.modality: s.orthanc_id
            for s in series
            if s.modality in case.result_modalities and models[s.orthanc_id] == case.network
        }
        if set(found) == set(case.result_modalities):
            return tuple(f"{m} {found[m]}" for m in sorted(found))
        time.sleep(0.05)
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scintnode demo", description=__doc__)
    parser.add_argument("--per-class", type=int, default=2, help="synthetic studies per class (default 2)")
    parser.add_argument("--network", action="append", choices=sorted(CASES), help="only these networks (default: all)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--workdir", type=Path, help="keep the studies, spool and PACS storage here (default: a temporary folder)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each study's results")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(f"scintnode demo — working in {args.workdir} (kept)")
        return _run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="scintnode-demo-") as workdir:
        print(f"scintnode demo — working in {workdir} (removed at the end; --workdir DIR keeps it)")
        return _run(args, Path(workdir))


def _run(args: argparse.Namespace, workdir: Path) -> int:
    from scintnode.node import Node  # torch and the networks load here

    cases: list[DemoStudy] = []
    for network in args.network or sorted(CASES):
        print(f"Writing SYNTHETIC studies for {network} (phantoms, not patients)...")
        cases += CASES[network](workdir / "studies" / network, args.per_class, args.seed)

    pacs = OrthancServer(workdir / "pacs")
    try:
        pacs.start()
    except OrthancUnavailable as exc:
        print(f"error: {exc}")
        return 2
    settings = Settings.model_validate(
        {
            "node": {"port": 0, "bind_address": "127.0.0.1"},
            "storage": {"root": str(workdir / "node")},
            "completion": {"release_quiet_seconds": 0.5, "long_quiet_seconds": 30},
            "dispatch": {"poll_seconds": 0.5, "base_delay_seconds": 1},
            "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
        }
    )
    avoid_numpy_huge_pages()  # as `scintnode serve` does
    keep_freed_memory_for_reuse()
    node = Node(settings)
    outcomes: list[StudyOutcome] = []
    try:
        node.start()
        print(
            f"Node SCINTNODE on port {node.port}; PACS (Orthanc {pacs.get('/system')['Version']}) "
            f"DICOM port {pacs.dicom_port}, REST {pacs.url}"
        )
        for case in cases:
            outcome = StudyOutcome(case)
            outcomes.append(outcome)
            for files in case.associations:
                send_files(list(files), "127.0.0.1", node.port, settings.node.ae_title)
            sent_at = time.monotonic()
            found = wait_for_results(pacs, case, time.monotonic() + args.timeout)
            if found is None:
                outcome.error = f"no {'+'.join(sorted(case.result_modalities))} in the PACS before the timeout"
            else:
                outcome.seconds_to_result = time.monotonic() - sent_at
                outcome.result_series = found
            with node.db.session() as session:
                job = session.scalars(
                    select(Job)
                    .where(Job.study_uid == case.result_study_uid, Job.network == case.network)
                    .order_by(Job.id.desc())
                ).first()
                if job is not None and job.result:
                    outcome.predicted = str(job.result["predicted"])
                    outcome.probabilities = dict(job.result["probabilities"])
                    outcome.inference_ms = job.inference_ms
                elif job is not None:
                    outcome.error = outcome.error or f"job {job.state}: {job.error}"
                else:
                    outcome.error = outcome.error or "no rule matched"
    finally:
        node.stop()
        pacs.stop()
    return _report(outcomes)


def _report(outcomes: list[StudyOutcome]) -> int:
    print()
    print("Results (models trained on SYNTHETIC phantoms; not clinical results):")
    for o in outcomes:
        head = f"  {o.case.network:<18} study {o.case.result_study_uid}"
        if o.error:
            print(f"{head}: MISSING — {o.error}")
            continue
        probs = ", ".join(f"{k} {v * 100:.1f}%" for k, v in (o.probabilities or {}).items())
        print(head)
        print(f"    synthetic truth {o.case.truth:<22} predicted {o.predicted:<22} [{probs}]")
        print(
            f"    in the PACS: {'; '.join(o.result_series)} — {o.seconds_to_result:.2f} s from the last "
            f"instance sent (inference {o.inference_ms or 0:.0f} ms)"
        )
    done = [o for o in outcomes if not o.error]
    correct = sum(o.predicted == o.case.truth for o in done)
    times = [o.seconds_to_result for o in done if o.seconds_to_result is not None]
    print()
    print(
        f"{len(done)}/{len(outcomes)} studies have their results in the PACS; "
        f"{correct}/{len(done)} predictions agree with the synthetic truth."
    )
    if times:
        print(
            f"Time from the last instance sent to all results stored: median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s"
        )
    return 0 if len(done) == len(outcomes) and outcomes else 1
