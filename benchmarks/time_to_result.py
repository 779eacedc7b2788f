"""Time to result: from the last instance of a study sent to its SR and SC (and SEG) stored in the PACS.

A node process (`scintnode serve`, networks preloaded) and Orthanc run on free ports; each network's
synthetic demo studies are sent one after another with DCMTK storescu, as modalities would, and the PACS
is polled through its REST API. Prints median and 95th percentile per network, with the share of each
job spent inside the network (from the node's own job records).

    .venv/bin/python -m benchmarks.time_to_result [--per-class 3] [--network thyroid-resnet34 ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy import select

from benchmarks.stats import quantile
from scintnode.db import Database, Job
from scintnode.demo import wait_for_results
from scintnode.demo_cases import CASES, DemoStudy
from scintnode.orthanc import OrthancServer
from scintnode.storescu import send_files
from tests.harness import start_node_process


def _memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--network", action="append", choices=sorted(CASES))
    parser.add_argument("--seed", type=int, default=99)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="scintnode-ttr-"))
    with OrthancServer(workdir / "pacs") as pacs:
        config = workdir / "node.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node": {"port": 0, "bind_address": "127.0.0.1"},
                    "storage": {"root": str(workdir / "node")},
                    "completion": {"release_quiet_seconds": 0.5},
                    "dispatch": {"poll_seconds": 0.5},
                    "http": {"port": 0},
                    "preload_networks": True,
                    "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
                }
            )
        )
        process, port = start_node_process(config, workdir / "node.log")
        try:
            idle = _memory_mb(process.pid, "VmRSS")
            print(f"node RSS, idle with every network loaded: {idle:.0f} MB")
            print(
                "| network | studies | time to result median s | p95 s | job median ms | network median ms "
                "| share outside the network |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            for network in args.network or sorted(CASES):
                cases: list[DemoStudy] = CASES[network](workdir / "studies" / network, args.per_class, args.seed)
                seconds: list[float] = []
                for case in cases:
                    for files in case.associations:
                        send_files(list(files), "127.0.0.1", port, "SCINTNODE")
                    sent = time.monotonic()
                    if wait_for_results(pacs, case, sent + 300) is None:
                        raise RuntimeError(f"{network}: no results for study {case.result_study_uid}")
                    seconds.append(time.monotonic() - sent)
                db = Database(f"sqlite:///{workdir / 'node' / 'index.db'}")
                with db.session() as session:
                    jobs = session.scalars(select(Job).where(Job.network == network, Job.state == "done")).all()
                    timed = [(j.inference_ms, j.result["total_ms"]) for j in jobs if j.inference_ms and j.result]
                db.dispose()
                total = statistics.median(t for _, t in timed) if timed else float("nan")
                inside = statistics.median(i for i, _ in timed) if timed else float("nan")
                outside = statistics.median(1 - i / t for i, t in timed) if timed else float("nan")
                print(
                    f"| {network} | {len(seconds)} | {statistics.median(seconds):.2f} | "
                    f"{quantile(seconds, 0.95):.2f} | {total:.0f} | {inside:.0f} | {outside:.0%} |",
                    flush=True,
                )
            print(f"node peak RSS under this load: {_memory_mb(process.pid, 'VmHWM'):.0f} MB")
        finally:
            process.terminate()
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
