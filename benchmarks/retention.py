"""Retention over a backlog, beside the receiver's index commits: what a pass costs the node.

A spool and index hold `--expired` routed input instances older than the retention period, and a
delivered output for every fourth (synthetic rows, each with a small file), as after `retention_days` was
lowered or a node was stopped for weeks, and `--kept` young ones. One retention pass
(`scintnode.retention.purge_expired`, as the node's hourly job runs it) removes the expired files while a
thread indexes new instances one at a time through the receiver's own group commit and index writes
(`GroupCommit`, `write_index_batch`; each one's file already stored), as a modality's association would.
It prints the pass's time and memory, and the receiver's commit times during the pass beside the same
commits with no pass running (the peer here is the node itself, idle). A second, steady pass (nothing
expired) is timed too.

    .venv/bin/python -m benchmarks.retention [--expired 200000 --kept 20000 --under /work]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pydicom.uid import generate_uid

from benchmarks.stats import quantile
from scintnode.db import Database, GroupCommit, utcnow
from scintnode.receive_index import Header, ReleaseWrite, StoreWrite, write_index_batch
from scintnode.receive_index_sqlite import INSERT_INSTANCES, timestamp
from scintnode.retention import purge_expired
from scintnode.spool import Spool, StoredFile

RETENTION_DAYS = 30.0
OUTPUT_EVERY = 4  # inputs per output in the backlog (an NM study: a few images in, an SR and an SC out)


def fill(db: Database, spool: Spool, expired: int, kept: int) -> None:
    """Index rows shaped as the receiver writes them, each with a 2 KB file in the spool, 100 to a folder."""
    now = utcnow()
    rows = []
    for number in range(expired + kept):
        age = dt.timedelta(days=RETENTION_DAYS + 30 * number / max(1, expired)) if number < expired else dt.timedelta()
        received = timestamp(now - age)
        path = f"inputs/backlog/{number // 100:05d}/{number % 100:02d}.dcm"
        rows.append(
            {
                "sop_instance_uid": f"2.25.{number + 1}",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.20",
                "study_uid": f"2.25.9{number // 3 + 1}",
                "series_uid": f"2.25.8{number // 3 + 1}",
                "patient_id": f"SYN{number // 3:07d}",
                "modality": "NM",
                "transfer_syntax": "1.2.840.10008.1.2.1",
                "path": path,
                "sha256": "0" * 64,
                "size": 2048,
                "calling_ae": "BENCHCAM",
                "peer_address": "127.0.0.1",
                "association_id": "backlog",
                "received_at": received,
                "routed_at": received,
            }
        )
        target = spool.absolute(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\0" * 2048)
    outputs, deliveries = [], []
    for number in range(expired // OUTPUT_EVERY):  # an SR or SC for every few inputs, delivered long ago
        uid, created = f"2.25.7{number + 1}", rows[number * OUTPUT_EVERY]["received_at"]
        path = f"outputs/backlog/{number // 100:05d}/{number % 100:02d}.dcm"
        outputs.append((uid, 1, "1.2.840.10008.5.1.4.1.1.88.34", "sr", rows[number]["study_uid"], path, created))
        deliveries.append((uid, "pacs", "sent", 1, created, "0x0000", "", created, created, created))
        target = spool.absolute(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\0" * 2048)
    connection = sqlite3.connect(db.url.removeprefix("sqlite:///"))
    with connection:
        connection.executemany(INSERT_INSTANCES, rows)
        connection.execute(
            "INSERT INTO jobs (id, idempotency_key, rule_name, ruleset_version, network, outputs, destinations,"
            " inputs, study_uid, state, attempts, error, created_at) VALUES (1, 'backlog', 'backlog', 'v', 'dscint',"
            " '[\"sr\"]', '[\"pacs\"]', '[]', '2.25.91', 'done', 1, '', ?)",
            (rows[0]["received_at"],),
        )
        connection.executemany("INSERT INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?)", outputs)
        connection.executemany(
            "INSERT INTO deliveries (sop_instance_uid, destination, state, attempts, next_attempt_at, last_status,"
            " last_error, created_at, updated_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            deliveries,
        )
    connection.close()
    os.sync()  # the files' writeback would otherwise land in the timed part


class Receiver(threading.Thread):
    """Indexes one new instance at a time through the receiver's group commit, timing each commit."""

    def __init__(self, db: Database) -> None:
        super().__init__(daemon=True)
        self.writer: GroupCommit[StoreWrite | ReleaseWrite] = GroupCommit(db.engine, write_index_batch)
        self.commits: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            uid = generate_uid()
            header = Header("1.2.840.10008.5.1.4.1.1.20", uid, uid, uid, "SYNNEW", "NM", "1.2.840.10008.1.2.1")
            stored = StoredFile(f"inputs/new/{uid}.dcm", "1" * 64, 2048)
            started = time.perf_counter()
            try:
                self.writer.submit(StoreWrite(header, stored, None))
            except Exception:
                self.failures += 1
            self.commits.append(time.perf_counter() - started)
            time.sleep(0.002)  # about the pace of one association's instances


def commit_figures(commits: list[float]) -> str:
    ms = [1000 * c for c in commits]
    return (
        f"{len(ms)} commits, median {statistics.median(ms):.2f} ms, p99 {quantile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.1f} ms"
    )


def receiving(db: Database, seconds: float) -> Receiver:
    receiver = Receiver(db)
    receiver.start()
    time.sleep(seconds)
    receiver.stop.set()
    receiver.join()
    return receiver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expired", type=int, default=200_000, help="routed inputs older than the period")
    parser.add_argument("--kept", type=int, default=20_000, help="young inputs the pass must keep")
    parser.add_argument("--under", type=Path, default=None, help="folder for the spool (default: the temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scintnode-retention-", dir=args.under) as tmp:
        root = Path(tmp)
        db = Database(f"sqlite:///{root / 'index.db'}")
        db.create_schema()
        spool = Spool(root / "spool")
        started = time.perf_counter()
        fill(db, spool, args.expired, args.kept)
        made = time.perf_counter() - started
        print(f"synthetic backlog: {args.expired} expired and {args.kept} young inputs ({made:.0f} s to make)")
        idle = receiving(db, 5.0)
        print(f"receiver, no pass running: {commit_figures(idle.commits)}")

        receiver = Receiver(db)
        receiver.start()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        removed = purge_expired(db, spool, RETENTION_DAYS)
        seconds = time.perf_counter() - started
        receiver.stop.set()
        receiver.join()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        print(
            f"retention pass over the backlog: {removed} files in {seconds:.1f} s ({removed / seconds:.0f} files/s), "
            f"peak RSS grew {grown:.0f} MB"
        )
        print(f"receiver, during the pass: {commit_figures(receiver.commits)}, {receiver.failures} failed")
        started = time.perf_counter()
        again = purge_expired(db, spool, RETENTION_DAYS)
        print(f"steady pass (nothing expired): {again} files in {1000 * (time.perf_counter() - started):.0f} ms")
        left = sum(1 for _ in spool.absolute("inputs/backlog").rglob("*.dcm"))
        outputs = sum(1 for _ in spool.absolute("outputs/backlog").rglob("*.dcm"))
        print(f"young inputs left in the spool: {left} of {args.kept}; expired outputs left: {outputs}")
        spool.close()
        db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
