"""An aged index: the rows of a real run, copied until the index holds as many instances as months of work.

A node that has run for a quarter holds about a million instances, their events, jobs, outputs,
deliveries and episodes. This copies every row of a source index (a `scintnode demo` run's, made here
unless `--source` names one) again and again, each copy with its own UIDs, Patient IDs, row ids and
times, the copies spread evenly over `--days` before now, until `--instances` are indexed. Episodes a copy
leaves open past their deadline are given up, as the node's deadline pass would have done. The spool's
files are not copied: the benchmarks that use it (`benchmarks/ingest.py --aged-index`) measure what the
index's size does. The data is synthetic.

    .venv/bin/python -m benchmarks.aged_index --out /work/aged.db [--instances 1000000 --days 90]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TABLES = ("instances", "series", "jobs", "episodes", "episode_members", "outputs", "deliveries", "events")
# integer columns holding a row id of a table, which each copy shifts past the source's ids
ID_COLUMNS = {
    "jobs": {"id": "jobs", "episode_id": "episodes", "supersedes_job_id": "jobs"},
    "episodes": {"id": "episodes", "last_job_id": "jobs"},
    "episode_members": {"id": "episode_members", "episode_id": "episodes"},
    "outputs": {"job_id": "jobs"},
    "deliveries": {"id": "deliveries"},
    "events": {"id": "events"},
}
ID_IN_DETAIL = re.compile(r'"(job|episode|delivery|supersedes_job)": (\d+)')  # the same ids in event details
DETAIL_TABLE = {"job": "jobs", "episode": "episodes", "delivery": "deliveries", "supersedes_job": "jobs"}
UID = re.compile(r"\b(?:\d+\.){4,}\d+\b")  # a DICOM UID in any text or JSON value (not an IPv4 address)
STANDARD = "1.2.840.10008."  # SOP classes and transfer syntaxes: the same in every copy
SYNTHETIC_PATIENT = re.compile(r"\bSYN[A-Z0-9]*")  # the phantoms' Patient IDs (SYNCT2026000, ...)


class Copier:
    """Makes the rows of copy `k` of the source's rows."""

    def __init__(self, source: sqlite3.Connection) -> None:
        self.columns = {t: [(r[1], r[2]) for r in source.execute(f"PRAGMA table_info({t})")] for t in TABLES}
        self.rows = {t: source.execute(f"SELECT * FROM {t}").fetchall() for t in TABLES}
        self.next_id = {
            t: 1 + (source.execute(f"SELECT max(id) FROM {t}").fetchone()[0] or 0)
            for t in {table for columns in ID_COLUMNS.values() for table in columns.values()}
        }

    def copy(self, table: str, k: int, shift: dt.timedelta) -> list[list[Any]]:
        ids = ID_COLUMNS.get(table, {})
        uid_root = f"2.25.{k}."

        def uid(match: re.Match[str]) -> str:
            return match[0] if match[0].startswith(STANDARD) else uid_root + match[0].rsplit(".", 1)[-1]

        def text(value: str) -> str:
            value = UID.sub(uid, value)
            return SYNTHETIC_PATIENT.sub(lambda m: f"{m[0]}K{k}", value)

        out = []
        for row in self.rows[table]:
            values: list[Any] = []
            for (name, kind), value in zip(self.columns[table], row, strict=True):
                if value is None:
                    values.append(None)
                elif name in ids:
                    values.append(value + k * self.next_id[ids[name]])
                elif kind == "DATETIME":
                    values.append((dt.datetime.fromisoformat(value) - shift).isoformat(" ", "microseconds"))
                elif isinstance(value, str):
                    value = text(value)
                    if name == "detail":
                        value = ID_IN_DETAIL.sub(
                            lambda m: f'"{m[1]}": {int(m[2]) + k * self.next_id[DETAIL_TABLE[m[1]]]}', value
                        )
                    elif name == "idempotency_key" or (name == "path" and table == "instances"):
                        value = f"aged/{k}/{value}"
                    values.append(value)
                else:
                    values.append(value)
            out.append(values)
        return out


def build(source: Path, out: Path, instances: int, days: float) -> dict[str, int]:
    """Write the aged index to `out`; returns the rows of each table."""
    shutil.copyfile(source, out)
    with sqlite3.connect(source) as connection:
        copier = Copier(connection)
    per_copy = max(1, len(copier.rows["instances"]))
    copies = max(0, instances // per_copy - 1)  # the source's own rows are copy 0
    target = sqlite3.connect(out)
    target.execute("PRAGMA journal_mode=WAL")
    target.execute("PRAGMA synchronous=OFF")  # a benchmark's input, remade if a crash cuts it short
    for k in range(1, copies + 1):
        shift = dt.timedelta(days=days * k / copies)
        for table in TABLES:
            names = ", ".join(f'"{name}"' for name, _ in copier.columns[table])
            marks = ", ".join("?" * len(copier.columns[table]))
            target.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", copier.copy(table, k, shift))
        if k % 500 == 0:
            target.commit()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    target.execute(
        "UPDATE episodes SET state = 'gave-up', deadline_reported = 1 WHERE state = 'open' AND deadline_at < ?",
        (now,),
    )
    target.commit()
    counts = {t: target.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    target.close()
    descriptor = os.open(out, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # written unsynced: its writeback would otherwise land in the benchmark that follows
    finally:
        os.close(descriptor)
    return counts


def demo_index(workdir: Path) -> Path:
    """A `scintnode demo` run's index (every network, Orthanc as the PACS)."""
    subprocess.run([sys.executable, "-m", "scintnode", "demo", "--workdir", str(workdir)], check=True)
    return workdir / "node" / "index.db"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the aged index to write (SQLite)")
    parser.add_argument("--instances", type=int, default=1_000_000, help="about how many instances it indexes")
    parser.add_argument("--days", type=float, default=90, help="the copies spread over this many days before now")
    parser.add_argument("--source", type=Path, help="the index to copy (default: a demo run's, made here)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scintnode-aged-") as tmp:
        source = args.source or demo_index(Path(tmp) / "demo")
        started = time.perf_counter()
        counts = build(source, args.out, args.instances, args.days)
    size = args.out.stat().st_size / 2**20
    print(f"aged index {args.out} ({size:.0f} MiB, {time.perf_counter() - started:.0f} s, synthetic):")
    for table, count in counts.items():
        print(f"  {table}: {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
