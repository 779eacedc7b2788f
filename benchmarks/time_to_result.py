"""Time to result: from the last instance of a study sent to its SR and SC (and SEG) stored in the PACS.

A node process (`scintnode serve`, networks preloaded) and Orthanc run on free ports. Each network's
synthetic demo studies are sent with DCMTK storescu in bursts: with `--senders S`, S modalities each send
one study over their own associations at the same moment, and the next burst starts once every study of
this one has its results. One sender is the quiet case (one study at a time); sixteen is a morning's
backlog arriving at once, queueing for the node's single worker. A watcher follows the PACS's change log,
so every study's clock stops when the last of its result series appears, however many are pending.

Prints median, 95th percentile and maximum per network and sender count, with the job's time and the share
spent outside the network's forward pass (decode, preprocessing, Grad-CAM, writing DICOM; from the node's own
job records), and the node's memory.

The peer, in the same run: Orthanc as the router many sites build (a Lua or Python callback on its
StableStudy event hands the study to the AI). The same studies are sent to a second Orthanc with its
default StableAge of 60 s, and the clock runs from each study's last instance sent to that event, when such
a router would only start to hand the study on: a lower bound on its time to result, before any network runs.

    .venv/bin/python -m benchmarks.time_to_result [--senders 1 4 16] [--studies 12] [--network dscint ...]
        [--peer-studies 2] [--peer-stable-age 60]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml
from sqlalchemy import func, select

from benchmarks.stats import quantile
from scintnode.db import Database, Job
from scintnode.demo_cases import CASES, DemoStudy, ct_cases
from scintnode.models import ct_unet
from scintnode.orthanc import OrthancServer
from scintnode.phantoms.cli import add_ct_geometry_options, ct_geometry
from scintnode.storescu import send_files
from scintnode.write.sr_content import MANUFACTURER
from tests.harness import start_node_process, wait_for_log

POLL_SECONDS = 0.02
ORTHANC_STABLE_AGE = 60  # Orthanc's default StableAge: a study is stable after 60 s without a new instance
CaseMaker = Callable[[Path, int, int], list[DemoStudy]]  # writes (folder, per class, seed) a network's studies


def changes_of_type(
    pacs: OrthancServer, change_type: str, since: int, pause: Callable[[float], bool]
) -> Iterator[tuple[str, float]]:
    """The id of each change of `change_type` in Orthanc's change log after `since`, with when it was read
    (time.monotonic). Once the log is read to its end it calls `pause(POLL_SECONDS)`, and stops when that
    returns False."""
    while True:
        page = pacs.get(f"/changes?since={since}&limit=1000")
        now = time.monotonic()
        for change in page["Changes"]:
            if change["ChangeType"] == change_type:
                yield change["ID"], now
        since = int(page["Last"])
        if page["Done"] and not pause(POLL_SECONDS):
            return


class ResultWatcher:
    """Follows Orthanc's change log in a thread and notes when each study first holds a series of each
    modality from each network (the model its Contributing Equipment names: a ParaNet episode's thyroid scan
    also gets the thyroid network's results, in the same study). A few requests per new series, not one per
    pending study per poll, so a burst of sixteen pending studies is timed as finely as one."""

    def __init__(self, pacs: OrthancServer) -> None:
        self._pacs = pacs
        self._since = int(pacs.get("/changes?last")["Last"])
        # (study UID, network) -> modality -> monotonic time
        self._first_seen: dict[tuple[str, str], dict[str, float]] = {}
        self._study_uids: dict[str, str] = {}  # Orthanc study id -> Study Instance UID
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="result-watcher", daemon=True)
        self._thread.start()

    def wait(self, case: DemoStudy, deadline: float) -> float | None:
        """When the last of the case's network's result series appeared (time.monotonic), or None at the
        deadline."""
        with self._changed:
            while True:
                seen = self._first_seen.get((case.result_study_uid, case.network), {})
                if case.result_modalities <= set(seen):
                    return max(seen[modality] for modality in case.result_modalities)
                if self._error is not None:
                    raise RuntimeError(f"the PACS change log could not be read: {self._error}") from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _follow(self) -> None:
        try:
            self._follow_changes()
        except BaseException as exc:  # handed to the waiting thread, which reports it
            with self._changed:
                self._error = exc
                self._changed.notify_all()

    def _follow_changes(self) -> None:
        for series_id, now in changes_of_type(self._pacs, "NewSeries", self._since, self._keep_following):
            self._note(series_id, now)

    def _keep_following(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    def _note(self, series_id: str, now: float) -> None:
        series = self._pacs.get(f"/series/{series_id}")
        study_id = series["ParentStudy"]
        if study_id not in self._study_uids:
            self._study_uids[study_id] = self._pacs.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
        network = self._pacs.contributing_model(series["Instances"][0], MANUFACTURER)
        with self._changed:
            modalities = self._first_seen.setdefault((self._study_uids[study_id], network), {})
            modalities.setdefault(series["MainDicomTags"].get("Modality", ""), now)
            self._changed.notify_all()


def distinct_cases(network: str, count: int, out: Path, seed: int, make: CaseMaker | None = None) -> list[DemoStudy]:
    """`count` different studies of `network` (a study sent twice would be a re-send, not a new job), written
    by `make` (default: the network's demo cases)."""
    make = make or CASES[network]
    per_class = 1
    while True:
        cases = make(out / f"p{per_class}", per_class, seed)
        if len(cases) >= count:
            return cases[:count]
        per_class = math.ceil(per_class * count / max(len(cases), 1))


def send_burst(cases: Sequence[DemoStudy], port: int, watcher: ResultWatcher, timeout: float) -> list[float]:
    """Each case from its own sender thread, all starting together; seconds from each case's last
    instance sent to its results in the PACS."""
    start = threading.Barrier(len(cases))
    sent: list[float] = [0.0] * len(cases)
    errors: list[BaseException] = []

    def sender(index: int, case: DemoStudy) -> None:
        try:
            start.wait()
            for files in case.associations:
                send_files(list(files), "127.0.0.1", port, "SCINTNODE")
            sent[index] = time.monotonic()
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i, case)) for i, case in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a sender failed: {errors[0]}") from errors[0]
    seconds = []
    for case, sent_at in zip(cases, sent, strict=True):
        stored = watcher.wait(case, sent_at + timeout)
        if stored is None:
            raise RuntimeError(f"{case.network}: no results for study {case.result_study_uid} in {timeout:.0f} s")
        seconds.append(stored - sent_at)
    return seconds


def _memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _jobs_after(db: Database, network: str, after_id: int) -> list[tuple[float, float]]:
    """(network ms, job ms) of the finished jobs of `network` with an id above `after_id`."""
    with db.session() as session:
        jobs = session.scalars(select(Job).where(Job.network == network, Job.state == "done", Job.id > after_id)).all()
        return [(j.inference_ms, j.result["total_ms"]) for j in jobs if j.inference_ms and j.result]


def _last_job_id(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.max(Job.id))) or 0)


def _node_config(workdir: Path, pacs: OrthancServer) -> Path:
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
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, nargs="+", default=[1], help="modalities sending at once")
    parser.add_argument(
        "--studies", type=int, default=12, help="studies per network and sender count (at least one burst)"
    )
    parser.add_argument("--network", action="append", choices=sorted(CASES))
    add_ct_geometry_options(parser, prefix="ct-")
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one study's results")
    parser.add_argument(
        "--peer-studies", type=int, default=2, help="studies per network sent to the peer router (0: no peer)"
    )
    parser.add_argument(
        "--peer-stable-age", type=int, default=ORTHANC_STABLE_AGE, help="the peer's StableAge in seconds"
    )
    args = parser.parse_args(argv)
    try:
        variants = _ct_at_geometry(args.ct_shape, args.ct_spacing)
    except ValueError as exc:
        parser.error(str(exc))
    # about 1.5 GB of studies, spool and PACS storage: removed even when a run fails or is interrupted
    with tempfile.TemporaryDirectory(prefix="scintnode-ttr-") as workdir:
        return _measure(args, Path(workdir), variants)


def _measure(args: argparse.Namespace, workdir: Path, variants: dict[str, tuple[CaseMaker, str]]) -> int:
    with OrthancServer(workdir / "pacs") as pacs:
        process, port = start_node_process(_node_config(workdir, pacs), workdir / "node.log")
        wait_for_log(process, workdir / "node.log", "networks loaded: ")  # the pipeline thread loads them after start
        watcher = ResultWatcher(pacs)
        db = Database(f"sqlite:///{workdir / 'node' / 'index.db'}")
        try:
            print(f"node RSS, idle with every network loaded: {_memory_mb(process.pid, 'VmRSS'):.0f} MB")
            print(
                "| network | senders | studies | time to result median s | p95 s | max s | job median ms "
                "| network median ms | share outside the network |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            # row label -> its studies and their median time to result, with the fewest senders
            quietest: dict[str, tuple[list[DemoStudy], float]] = {}
            for network in args.network or sorted(CASES):
                for senders in args.senders:
                    bursts = math.ceil(args.studies / senders)
                    out = workdir / "studies" / f"{network}-{senders}"
                    make, label = variants.get(network, (None, network))
                    cases = distinct_cases(network, bursts * senders, out, args.seed + senders, make)
                    before = _last_job_id(db)
                    seconds: list[float] = []
                    for burst in range(bursts):
                        seconds += send_burst(
                            cases[burst * senders : (burst + 1) * senders], port, watcher, args.timeout
                        )
                    timed = _jobs_after(db, network, before)
                    total = statistics.median(t for _, t in timed) if timed else math.nan
                    inside = statistics.median(i for i, _ in timed) if timed else math.nan
                    outside = statistics.median(1 - i / t for i, t in timed) if timed else math.nan
                    if senders == min(args.senders):
                        quietest[label] = (cases, statistics.median(seconds))
                    print(
                        f"| {label} | {senders} | {len(seconds)} | "
                        f"{statistics.median(seconds):.2f} | {quantile(seconds, 0.95):.2f} | {max(seconds):.2f} | "
                        f"{total:.0f} | {inside:.0f} | {outside:.0%} |",
                        flush=True,
                    )
            print(f"node peak RSS under this load: {_memory_mb(process.pid, 'VmHWM'):.0f} MB")
        finally:
            watcher.close()
            db.dispose()
            process.terminate()
            process.wait(timeout=60)
    if args.peer_studies > 0:
        print_peer_rows(quietest, args.peer_studies, args.peer_stable_age, min(args.senders), workdir / "peer")
    return 0


def print_peer_rows(
    quietest: dict[str, tuple[list[DemoStudy], float]], studies: int, stable_age: int, senders: int, workdir: Path
) -> None:
    """The peer router's rows: each row's first `studies` studies sent to an Orthanc with `stable_age`."""
    sent = {label: cases[:studies] for label, (cases, _) in quietest.items()}
    seconds, version = peer_stable_seconds([case for cases in sent.values() for case in cases], stable_age, workdir)
    print(
        f"Peer, same run: Orthanc {version} as a router, which hands a study on at its StableStudy "
        f"event (StableAge {stable_age} s), before any network runs"
    )
    print(f"| studies of | studies | to StableStudy median s | max s | x scintnode's median, {senders} sender(s) |")
    print("|---|---:|---:|---:|---:|")
    for label, cases in sent.items():
        times = [seconds[case.result_study_uid] for case in cases]
        ratio = statistics.median(times) / quietest[label][1]
        print(f"| {label} | {len(times)} | {statistics.median(times):.2f} | {max(times):.2f} | {ratio:.1f} |")


def peer_stable_seconds(cases: Sequence[DemoStudy], stable_age: int, workdir: Path) -> tuple[dict[str, float], str]:
    """Seconds from each case's last instance sent to a fresh Orthanc (StableAge `stable_age`) until Orthanc
    reports its result study stable, by Study Instance UID, and Orthanc's version. The cases are sent one
    after another."""
    with OrthancServer(workdir, ae_title="ROUTER", stable_age_seconds=stable_age) as peer:
        version = str(peer.get("/system")["Version"])
        since = int(peer.get("/changes?last")["Last"])
        sent: dict[str, float] = {}
        for case in cases:
            for files in case.associations:
                send_files(list(files), "127.0.0.1", peer.dicom_port, peer.ae_title)
            sent[case.result_study_uid] = time.monotonic()
        stable: dict[str, float] = {}
        deadline = time.monotonic() + 3 * stable_age + 60

        def still_waiting(seconds: float) -> bool:
            if sent.keys() <= stable.keys():
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"the peer reported {len(stable)} of {len(sent)} studies stable in time")
            time.sleep(seconds)
            return True

        for study_id, now in changes_of_type(peer, "StableStudy", since, still_waiting):
            stable.setdefault(peer.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"], now)
    return {uid: stable[uid] - at for uid, at in sent.items()}, version


def _ct_at_geometry(shape: Sequence[int] | None, spacing: Sequence[float] | None) -> dict[str, tuple[CaseMaker, str]]:
    """The CT cases at the geometry asked for, with their rows' label; empty for the demo's own geometry."""
    if not (shape or spacing):
        return {}
    full_shape, full_spacing = ct_geometry(shape, spacing)
    label = f"{ct_unet.NAME} ({'x'.join(map(str, full_shape))} at {'x'.join(f'{v:g}' for v in full_spacing)} mm)"
    return {ct_unet.NAME: (functools.partial(ct_cases, shape=full_shape, spacing_mm=full_spacing), label)}


if __name__ == "__main__":
    raise SystemExit(main())
