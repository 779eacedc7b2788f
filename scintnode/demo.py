"""`scintnode demo`: the whole path on one machine — synthetic studies in, SR and heatmap SC out in a real PACS.

Starts Orthanc (the PACS) and a node on free ports, sends synthetic thyroid studies of every class as a
modality would (DCMTK storescu), waits for the results to land in Orthanc and prints them per study."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from scintnode.config import Destination, Settings
from scintnode.db import Job
from scintnode.orthanc import OrthancServer, OrthancUnavailable
from scintnode.serve_cli import configure_logging
from scintnode.storescu import send_files

log = logging.getLogger("scintnode.demo")


@dataclass
class StudyOutcome:
    study_uid: str
    truth: str
    predicted: str = ""
    probabilities: dict[str, float] | None = None
    sr_series: str = ""
    sc_series: str = ""
    seconds_to_result: float | None = None
    inference_ms: float | None = None
    error: str = ""


def _studies(folder: Path) -> dict[str, list[Path]]:
    studies: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.rglob("*.dcm")):
        studies[str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)].append(path)
    return studies


def _wait_for_results(pacs: OrthancServer, study_uid: str, deadline: float) -> tuple[str, str] | None:
    """Poll the PACS until the study holds an SR series and an SC (OT) series from the node."""
    while time.monotonic() < deadline:
        series = pacs.series_of_study(study_uid)
        sr = [s for s in series if s.modality == "SR" and s.instance_ids]
        sc = [s for s in series if s.modality == "OT" and s.instance_ids]
        if sr and sc:
            return sr[0].orthanc_id, sc[0].orthanc_id
        time.sleep(0.05)
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scintnode demo", description=__doc__)
    parser.add_argument("--per-class", type=int, default=2, help="synthetic studies per class (default 2)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workdir", type=Path, help="where studies, spool and PACS storage go (default: temp)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each study's results")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scintnode-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)

    from scintnode.node import Node  # torch and the network load here
    from scintnode.phantoms.thyroid import write_studies

    print(f"scintnode demo — working in {workdir}")
    print("Writing SYNTHETIC 99mTc-pertechnetate thyroid studies (phantoms, not patients)...")
    truth_file = write_studies(workdir / "studies", per_class=args.per_class, seed=args.seed)
    entries = json.loads(truth_file.read_text())["images"]
    truth = {str(e["study_instance_uid"]): str(e["label"]) for e in entries}
    studies = _studies(workdir / "studies")

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
            "destinations": {"pacs": Destination(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)},
        }
    )
    node = Node(settings)
    outcomes: list[StudyOutcome] = []
    try:
        node.start()
        print(f"Node SCINTNODE on port {node.port}; PACS (Orthanc {pacs.get('/system')['Version']}) "
              f"DICOM port {pacs.dicom_port}, REST {pacs.url}")
        for study_uid, files in studies.items():
            outcome = StudyOutcome(study_uid, truth.get(study_uid, "?"))
            outcomes.append(outcome)
            sent_at = time.monotonic()
            send_files(files, "127.0.0.1", node.port, settings.node.ae_title)
            found = _wait_for_results(pacs, study_uid, time.monotonic() + args.timeout)
            if found is None:
                outcome.error = "no SR and SC in the PACS before the timeout"
            else:
                outcome.seconds_to_result = time.monotonic() - sent_at
                outcome.sr_series, outcome.sc_series = found
            with node.db.session() as session:
                job = session.scalars(select(Job).where(Job.study_uid == study_uid)).first()
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
    print("Results (model trained on SYNTHETIC phantoms; not a clinical result):")
    for o in outcomes:
        if o.error:
            print(f"  study {o.study_uid}: MISSING — {o.error}")
            continue
        probs = ", ".join(f"{k} {v * 100:.1f}%" for k, v in (o.probabilities or {}).items())
        print(f"  study {o.study_uid}")
        print(f"    synthetic truth {o.truth:<22} predicted {o.predicted:<22} [{probs}]")
        print(f"    SR in PACS series {o.sr_series}, SC in PACS series {o.sc_series}; "
              f"{o.seconds_to_result:.2f} s from send to both stored (inference {o.inference_ms or 0:.0f} ms)")
    done = [o for o in outcomes if not o.error]
    correct = sum(o.predicted == o.truth for o in done)
    times = [o.seconds_to_result for o in done if o.seconds_to_result is not None]
    print()
    print(f"{len(done)}/{len(outcomes)} studies have SR and SC in the PACS; "
          f"{correct}/{len(done)} predictions agree with the synthetic truth.")
    if times:
        print(f"Time from send to results stored: median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    return 0 if len(done) == len(outcomes) and outcomes else 1
