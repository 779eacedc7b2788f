"""Crashes: the node process is killed with SIGKILL at random moments, twenty times, while four senders stream
studies, and restarted each time. Every instance answered with success is stored exactly once, every study
gets exactly one result in PACS (Orthanc), and nothing is left pending.

The senders behave like modalities: one association per study, and a study that got no success answer
(refused connection, aborted association) is sent again. Each study is one synthetic NM object, routed by
a rule of this test to `input-check` (no AI), whose SR goes to Orthanc."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydicom import Dataset
from pynetdicom import AE
from sqlalchemy import func, select

from scintnode.db import Database, Delivery, Instance, Job
from scintnode.orthanc import OrthancServer, free_port
from tests.test_reliability_input import synthetic_nm
from tests.test_reliability_outage import INPUT_CHECK_RULES

pytestmark = pytest.mark.e2e
KILLS = 20
SENDERS = 4
STUDIES_PER_SENDER = 12


class Sender(threading.Thread):
    """Streams its studies to the node's port until each one got 0x0000; records which did."""

    def __init__(self, port: int, studies: list[Dataset], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.port = port
        self.studies = studies
        self.acknowledged: list[str] = []
        self.attempts = 0
        self.stop = threading.Event()  # set when the test ends, passed or failed: no sender outlives it

    def run(self) -> None:
        ae = AE(ae_title=self.name)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.20")
        pending = list(self.studies)
        while pending and not self.stop.is_set():
            self.attempts += 1
            assoc = ae.associate("127.0.0.1", self.port, ae_title="SCINTNODE")
            if not assoc.is_established:
                time.sleep(0.1)  # the node is down: a modality retries later
                continue
            try:
                status = assoc.send_c_store(pending[0])
                if int(getattr(status, "Status", -1)) == 0x0000:
                    self.acknowledged.append(str(pending.pop(0).SOPInstanceUID))
            except Exception:  # the node died mid-store: no answer, send again
                pass
            finally:
                if assoc.is_established:
                    assoc.release()


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


def starts_listened(log: Path) -> int:
    """How many of the node's starts reached listening (the line each prints once it listens)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return len(re.findall(r"^scintnode listening as ", text, re.MULTILINE))


def start_node(config: Path, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "scintnode", "serve", "--config", str(config)], stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    return process


def test_twenty_sigkills_while_four_senders_stream_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "input-check.yaml").write_text(yaml.safe_dump(INPUT_CHECK_RULES))
    port = free_port()  # the same port across restarts, as a real node has
    chance = random.Random(20260302)
    studies = [[synthetic_nm() for _ in range(STUDIES_PER_SENDER)] for _ in range(SENDERS)]
    with OrthancServer(tmp_path / "pacs") as pacs:
        config = tmp_path / "node.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node": {"port": port, "bind_address": "127.0.0.1", "network_timeout_seconds": 10},
                    "storage": {"root": "spool"},
                    "http": {"enabled": False},
                    "rules_dir": str(rules),
                    "dispatch": {"poll_seconds": 0.2, "base_delay_seconds": 0.5, "max_delay_seconds": 2},
                    "destinations": {
                        "pacs": {
                            "ae_title": pacs.ae_title,
                            "host": "127.0.0.1",
                            "port": pacs.dicom_port,
                            "timeout_seconds": 2,
                        }
                    },
                }
            )
        )
        log = tmp_path / "node.log"
        senders = [Sender(port, batch, f"CRASHCAM{n}") for n, batch in enumerate(studies)]
        for sender in senders:
            sender.start()
        kills_at: list[float] = []
        started = time.monotonic()
        node: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(KILLS):
                listened = starts_listened(log)
                node = start_node(config, log)
                wait_for(lambda before=listened: starts_listened(log) > before, 60, "the node to listen")
                alive = chance.uniform(0.2, 2.0)  # a random moment: receiving, routing, running a job or sending
                time.sleep(alive)
                node.send_signal(signal.SIGKILL)
                node.wait()
                kills_at.append(round(alive, 2))
            node = start_node(config, log)
            for sender in senders:
                sender.join(timeout=120)
                assert not sender.is_alive(), f"{sender.name} could not finish; the node's log ends:\n{log_tail(log)}"
            acknowledged = [uid for sender in senders for uid in sender.acknowledged]
            db = Database(f"sqlite:///{tmp_path / 'spool' / 'index.db'}")

            def settled() -> bool:
                with db.session() as session:
                    unrouted = session.scalar(select(func.count()).where(Instance.routed_at.is_(None)))
                    open_jobs = session.scalar(select(func.count()).where(Job.state.in_(["pending", "running"])))
                    done = session.scalar(select(func.count()).where(Job.state == "done"))
                    waiting = session.scalar(select(func.count()).where(Delivery.state != "sent"))
                return unrouted == 0 and open_jobs == 0 and done == len(acknowledged) and waiting == 0

            # a delivery claimed when the node was killed waits out its lease (about a minute) before it is retried
            wait_for(settled, 150, "every study routed, run and delivered")
            elapsed = time.monotonic() - started
            with db.session() as session:
                rows = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
                jobs = session.scalars(select(Job)).all()
            db.dispose()
        finally:
            for sender in senders:
                sender.stop.set()
            if node is not None and node.poll() is None:
                node.send_signal(signal.SIGTERM)
                node.wait(timeout=60)
        all_sent = sorted(str(ds.SOPInstanceUID) for batch in studies for ds in batch)
        assert sorted(acknowledged) == all_sent and len(set(acknowledged)) == len(acknowledged)
        assert sorted(rows) == all_sent  # each answered instance stored, once (the primary key)
        assert not list((tmp_path / "spool" / "tmp").glob("*.part"))  # a restart sweeps what a kill cut short
        slots = tmp_path / "spool" / "inputs" / "slots"
        written = {str(p.relative_to(tmp_path / "spool")) for p in slots.rglob("*.dcm") if p.stat().st_size}
        assert written == {row.path for row in rows.values()}  # and what it wrote but never indexed
        for row in rows.values():
            stored = (tmp_path / "spool" / row.path).read_bytes()
            assert hashlib.sha256(stored).hexdigest() == row.sha256
        assert sorted(uid for job in jobs for uid in job.inputs) == all_sent and {j.state for j in jobs} == {"done"}
        for batch in studies:
            for ds in batch:
                results = [s for s in pacs.series_of_study(str(ds.StudyInstanceUID)) if s.modality == "SR"]
                assert sum(len(s.instance_ids) for s in results) == 1, ds.StudyInstanceUID
    attempts = sum(sender.attempts for sender in senders)
    print(f"\n{KILLS} kills at {kills_at} s after listening; {len(all_sent)} studies, {attempts} associations tried,"
          f" settled {elapsed:.0f} s after the first start")  # fmt: skip
    assert os.path.exists(log)
