"""Ingest benchmark: scintnode beside DCMTK storescp and Orthanc, receiving the same sets in the same run.

DCMTK storescu sends each set over loopback with 1 and 4 parallel associations (TCP_NODELAY=1 for every
DCMTK-based party). Each receiver is started fresh and answers C-ECHO before the clock starts; a run
counts only if every instance was stored. scintnode runs as `scintnode serve` with an empty rule set, so
what is measured is receive: bytes on disk (fsync) and indexed before success is answered.

    .venv/bin/python -m benchmarks.ingest [--ct 300 --nm 300 --wb 20 --rounds 3 --json out.json] [--under /dev/shm]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.datasets import write_ct, write_nm
from scintnode.orthanc import OrthancServer, free_port

TICKS = os.sysconf("SC_CLK_TCK")
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Row:
    receiver: str
    dataset: str
    associations: int
    instances: int
    seconds: float
    megabytes: float
    cpu_seconds: float
    rss_mb: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds


@dataclass
class Receiver:
    name: str
    port: int
    called_ae: str
    pid: int


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICKS  # utime stime cutime cstime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait_echo(port: int, ae: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(["echoscu", "-aec", ae, "127.0.0.1", str(port)], capture_output=True, env=NODELAY)
        if result.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no C-ECHO answer on port {port}")


def working_copy(index: Path, workdir: Path) -> Path:
    """A copy of an aged index for the node to work on, made once before the first run.

    A copy per run (2.3 GiB for a million instances) slowed the node's own writes that followed it: on this
    project's virtual machine the copy takes up the memory the guest had touched lately, and a page the host
    must first back costs about 10 µs where a reused one costs 2 (RESULTS.md, "An index months old"). The
    runs share this copy, and each run's rows are taken out of it after the run (`_rows_added_since`)."""
    copy = workdir / "aged-index.db"
    shutil.copyfile(index, copy)
    os.sync()  # the copy's writeback would otherwise land in the first timed run, behind the node's first fsyncs
    return copy


@contextmanager
def scintnode(workdir: Path, index: Path | None = None) -> Iterator[Receiver]:
    """`scintnode serve` with no rules; on `index` (a working copy of an aged one) if given, through a link."""
    rules = workdir / "no-rules"
    rules.mkdir(parents=True, exist_ok=True)
    if index is not None:
        (workdir / "spool").mkdir(parents=True, exist_ok=True)
        os.link(index, workdir / "spool" / "index.db")
        last_rows = _last_rowids(index)
    config = workdir / "node.yaml"
    config.write_text(
        f"node: {{port: 0, bind_address: 127.0.0.1}}\nstorage: {{root: {workdir / 'spool'}}}\n"
        f"rules_dir: {rules}\nhttp: {{enabled: false}}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "scintnode", "serve", "--config", str(config), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    port = 0
    for line in process.stdout:
        match = re.search(r"on port (\d+)", line)
        if match:
            port = int(match.group(1))
            break
    _wait_echo(port, "SCINTNODE")
    try:
        yield Receiver("scintnode" if index is None else "scintnode, aged index", port, "SCINTNODE", process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
        if index is not None:
            _rows_added_since(workdir / "spool" / "index.db", last_rows)


def _last_rowids(index: Path) -> dict[str, int]:
    with closing(sqlite3.connect(index)) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            table: connection.execute(f'SELECT coalesce(max(rowid), 0) FROM "{table}"').fetchone()[0]
            for table in tables
        }


def _rows_added_since(index: Path, last_rows: dict[str, int]) -> None:
    """Take the rows a run added out of the shared index, so the next run starts on the same index and receives
    new instances, not re-sends of the set it already holds. Opened through the run's link, so what the node
    left in the WAL beside it is read; closing the last connection checkpoints the WAL into the copy."""
    with closing(sqlite3.connect(index)) as connection, connection:
        for table, rowid in last_rows.items():
            connection.execute(f'DELETE FROM "{table}" WHERE rowid > ?', (rowid,))


@contextmanager
def dcmtk(workdir: Path) -> Iterator[Receiver]:
    out = workdir / "dcmtk"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "--fork", "-aet", "DCMTK", "-od", str(out), str(port)],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_echo(port, "DCMTK")
    try:
        yield Receiver("dcmtk storescp", port, "DCMTK", process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def orthanc(workdir: Path) -> Iterator[Receiver]:
    with OrthancServer(workdir / "orthanc") as server:
        _wait_echo(server.dicom_port, server.ae_title)
        assert server._process is not None
        yield Receiver("orthanc", server.dicom_port, server.ae_title, server._process.pid)


RECEIVERS = {"dcmtk": dcmtk, "orthanc": orthanc, "scintnode": scintnode}


def send(receiver: Receiver, files: list[Path], associations: int) -> float:
    chunks = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-R", "-aec", receiver.called_ae, "127.0.0.1", str(receiver.port), *map(str, chunk)],
            env=NODELAY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for chunk in chunks
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0 or "Failed" in err or "Error" in err:
            raise RuntimeError(f"storescu to {receiver.name} failed (exit {sender.returncode}): {err[-500:]}")
    return time.perf_counter() - started


def measure(name: str, dataset: str, files: list[Path], associations: int, workdir: Path) -> Row:
    # storescp leaves its files unsynced: flush them first, or their writeback lands in the next run
    os.sync()
    storage = workdir / f"{name}-{dataset}-{associations}"
    with RECEIVERS[name](storage) as receiver:
        cpu_before = _cpu_seconds(receiver.pid)
        seconds = send(receiver, files, associations)
        cpu = _cpu_seconds(receiver.pid) - cpu_before
        rss = _rss_mb(receiver.pid)
    # every run starts on the disk as the first did: received copies left behind slowed the later rounds
    shutil.rmtree(storage)
    size = sum(p.stat().st_size for p in files) / 1e6
    return Row(receiver.name, dataset, associations, len(files), seconds, size, cpu, rss)


def _ratio(row: Row, rows: list[Row], receiver: str) -> str:
    """inst/s over the same set and association count on `receiver` in this run; "–" when it was not run."""
    for base in rows:
        if base.receiver == receiver and base.dataset == row.dataset and base.associations == row.associations:
            return f"{row.per_second / base.per_second:.2f}"
    return "–"


def table(rows: list[Row]) -> str:
    lines = [
        "| receiver | set | assoc | inst/s | MB/s | x dcmtk | x orthanc | rx CPU ms/inst | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.receiver} | {row.dataset} | {row.associations} | {row.per_second:.0f} | "
            f"{row.megabytes / row.seconds:.0f} | {_ratio(row, rows, 'dcmtk storescp')} | "
            f"{_ratio(row, rows, 'orthanc')} | {1000 * row.cpu_seconds / row.instances:.2f} | {row.rss_mb:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=int, default=300, help="CT instances (0 leaves the set out)")
    parser.add_argument("--nm", type=int, default=300, help="NM instances (0 leaves the set out)")
    parser.add_argument("--wb", type=int, default=20, help="whole-body NM instances (0 leaves the set out)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell; the median is reported")
    parser.add_argument("--receivers", default="dcmtk,orthanc,scintnode")
    parser.add_argument(
        "--associations", default="1,4", help="parallel storescu associations per cell, comma-separated (e.g. 1,4,16)"
    )
    parser.add_argument("--json", type=Path, help="also write every run as JSON")
    parser.add_argument(
        "--aged-index",
        type=Path,
        help="also run scintnode on a copy of this index (receiver scintnode-aged), as a node that has run for"
        " months would receive: make one with benchmarks/aged_index.py",
    )
    parser.add_argument(
        "--under",
        type=Path,
        help="make the working folder (the sets and every receiver's storage) in this folder instead of the system's"
        " temporary folder; on a tmpfs such as /dev/shm every fsync is free, which measures a receiver without its"
        " disk",
    )
    args = parser.parse_args(argv)
    if args.aged_index is not None and "scintnode-aged" not in args.receivers.split(","):
        args.receivers += ",scintnode-aged"
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install dcmtk (scripts/setup.sh does)")
            return 2
    # gigabytes of synthetic sets and received copies: removed even when a run fails or is interrupted
    with tempfile.TemporaryDirectory(prefix="scintnode-bench-", dir=args.under) as workdir:
        return _measure(args, Path(workdir))


def _measure(args: argparse.Namespace, workdir: Path) -> int:
    if args.aged_index is not None:
        print(f"copying the aged index {args.aged_index} ...", flush=True)
        RECEIVERS["scintnode-aged"] = functools.partial(scintnode, index=working_copy(args.aged_index, workdir))
    print(f"writing synthetic sets under {workdir} ...", flush=True)
    sets = {}  # a count of 0 leaves its set out
    if args.ct:
        sets["ct 512x512"] = write_ct(workdir / "sets" / "ct", args.ct)
    if args.nm:
        sets["nm 256x256"] = write_nm(workdir / "sets" / "nm", args.nm)
    if args.wb:
        sets["wb nm 2x1024x256"] = write_nm(workdir / "sets" / "wb", args.wb, whole_body=True)
    rows: list[Row] = []
    for dataset, files in sets.items():
        for associations in (int(a) for a in args.associations.split(",")):
            names = args.receivers.split(",")
            # rounds interleave the receivers, so a drift of the shared machine touches each of them alike
            runs: dict[str, list[Row]] = {name: [] for name in names}
            for r in range(args.rounds):
                for name in names:
                    runs[name].append(measure(name, dataset, files, associations, workdir / f"r{r}"))
            for name in names:
                ordered = sorted(runs[name], key=lambda row: row.seconds)
                rows.append(ordered[len(ordered) // 2])
                print(
                    f"  {name:<10} {dataset:<18} x{associations}: "
                    f"{statistics.median(r.per_second for r in ordered):7.1f} inst/s "
                    f"(runs: {', '.join(f'{r.per_second:.0f}' for r in runs[name])})",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print()
    print(table(rows))
    aged = [row for row in rows if row.receiver == "scintnode, aged index"]
    for row in aged:
        print(f"aged index x empty index, {row.dataset} x{row.associations}: {_ratio(row, rows, 'scintnode')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
