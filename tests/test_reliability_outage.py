"""PACS outages: every result is delivered once the PACS is back and none twice; a PACS that accepts the
association but fails the store is retried (0xA7xx) or dead-lettered at once (0xA9xx, 0xCxxx); dead letters
are listed and resubmitted with `scintnode deliveries`.

The ten-minute outage runs on the dispatcher's injectable clock (deliver_due(now=...)): the PACS really
refuses every connection, but the minutes between attempts are simulated, not waited. A shorter outage
runs end to end for real: the node as a process, Orthanc stopped and started again."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from sqlalchemy import func, select

from scintnode.config import Destination, DispatchSettings
from scintnode.db import Database, Delivery, Job, Output, utcnow
from scintnode.orthanc import OrthancServer, free_port
from scintnode.send import Dispatcher
from scintnode.send_cli import main as deliveries_cli
from scintnode.spool import Spool
from scintnode.storescu import send_files
from tests.test_reliability_input import synthetic_nm

pytestmark = pytest.mark.e2e
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
INPUT_CHECK_RULES = {
    "rules": [
        {
            "name": "reliability-input-check",
            "description": "every NM object to input-check (no AI), its SR to PACS",
            "network": "input-check",
            "outputs": ["sr"],
            "destinations": ["pacs"],
            "when": {"attribute": "Modality", "equals": "NM"},
        }
    ]
}


def queue_outputs(root: Path, count: int) -> tuple[Database, Spool, list[str]]:
    """An index with `count` written outputs (synthetic NM files stand in for SRs), each queued for pacs."""
    spool = Spool(root)
    db = Database(f"sqlite:///{root / 'index.db'}")
    db.create_schema()
    uids = []
    with db.session() as session:
        job = Job(
            idempotency_key="outage",
            rule_name="r",
            ruleset_version="v",
            network="input-check",
            outputs=["sr"],
            destinations=["pacs"],
            inputs=[],
            study_uid="1.2.3",
            state="done",
        )
        session.add(job)
        session.flush()
        for _ in range(count):
            ds = synthetic_nm()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            stored = spool.store_output(buffer.getvalue(), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
            output = Output(
                sop_instance_uid=str(ds.SOPInstanceUID),
                job_id=job.id,
                sop_class_uid=NM_STORAGE,
                kind="sr",
                study_uid=str(ds.StudyInstanceUID),
                path=stored.path,
            )
            session.add(output)
            session.flush()
            Dispatcher(db, spool.root, {}, DispatchSettings(), "SCINTNODE").enqueue(session, output, ["pacs"])
            uids.append(str(ds.SOPInstanceUID))
    return db, spool, uids


def states(db: Database) -> dict[str, int]:
    with db.session() as session:
        return dict(session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all())


def test_a_ten_minute_outage_on_the_injected_clock_delivers_everything_once(tmp_path: Path) -> None:
    db, spool, uids = queue_outputs(tmp_path / "spool", 6)
    pacs = OrthancServer(tmp_path / "pacs")  # ports reserved, not started: the PACS is down
    settings = DispatchSettings(base_delay_seconds=5, max_delay_seconds=120)
    destination = Destination(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port, timeout_seconds=2)
    dispatcher = Dispatcher(db, spool.root, {"pacs": destination}, settings, "SCINTNODE")
    start = utcnow()
    now = start
    while now < start + dt.timedelta(minutes=10):  # ten simulated minutes, a dispatch round every 5 s
        assert dispatcher.deliver_due(now=now) == 0
        now += dt.timedelta(seconds=5)
    with db.session() as session:
        attempts = sorted(d.attempts for d in session.scalars(select(Delivery)))
        last = {d.last_status for d in session.scalars(select(Delivery))}
    assert min(attempts) >= 6 and last == {"connection-refused"}  # backoff: 5, 10, 20, 40, 80, 120, 120 ... s
    assert states(db) == {"pending": 6}
    with pacs:
        later = now + dt.timedelta(seconds=settings.max_delay_seconds * 1.2)
        assert dispatcher.deliver_due(now=later) == 6
        assert [dispatcher.deliver_due(now=later + dt.timedelta(days=d)) for d in (1, 2)] == [0, 0]
        held = pacs.get("/instances")
        found = [pacs.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in held]
    assert sorted(found) == sorted(uids)  # each once
    assert states(db) == {"sent": 6}


class FlakyPacs:
    """A pynetdicom Storage SCP that answers each instance from a script of statuses, then success."""

    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.stored: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="FLAKYPACS")
        ae.add_supported_context(NM_STORAGE, ExplicitVRLittleEndian)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        answers = self.script.get(uid, [])
        status = answers.pop(0) if answers else 0x0000
        if status == 0x0000:
            self.stored.append(uid)
        return status


@pytest.fixture
def flaky_pacs() -> Iterator[FlakyPacs]:
    pacs = FlakyPacs()
    yield pacs
    pacs.server.shutdown()


def test_a_pacs_that_fails_the_store_is_retried_or_dead_lettered_and_resubmitted(
    tmp_path: Path, flaky_pacs: FlakyPacs, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "spool"
    db, spool, (transient, refused, cannot, fine) = queue_outputs(root, 4)
    flaky_pacs.script = {transient: [0xA700, 0xA702], refused: [0xA900], cannot: [0xC000]}
    destination = Destination(ae_title="FLAKYPACS", host="127.0.0.1", port=flaky_pacs.port, timeout_seconds=5)
    dispatcher = Dispatcher(db, spool.root, {"pacs": destination}, DispatchSettings(base_delay_seconds=1), "SCINTNODE")
    now = utcnow()
    assert dispatcher.deliver_due(now=now) == 3  # fine sent; refused and cannot dead at once
    with db.session() as session:
        by_uid = {d.sop_instance_uid: d for d in session.scalars(select(Delivery))}
    assert (by_uid[refused].state, by_uid[refused].attempts, by_uid[refused].last_status) == ("dead", 1, "0xA900")
    assert (by_uid[cannot].state, by_uid[cannot].last_status) == ("dead", "0xC000")
    assert (by_uid[transient].state, by_uid[transient].last_status) == ("pending", "0xA700")
    for step in (1, 2):
        dispatcher.deliver_due(now=now + dt.timedelta(minutes=step))
    assert flaky_pacs.stored.count(transient) == 1 and flaky_pacs.stored.count(fine) == 1

    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"storage": {"root": str(root)}}))
    capsys.readouterr()
    assert deliveries_cli(["--config", str(config), "list", "--state", "dead", "--errors"]) == 0
    listed = capsys.readouterr().out
    assert refused in listed and cannot in listed and transient not in listed and "0xA900" in listed
    assert deliveries_cli(["--config", str(config), "resubmit", "--all-dead"]) == 0  # the PACS was fixed
    assert "resubmitted 2 dead letter(s)" in capsys.readouterr().out
    assert dispatcher.deliver_due(now=utcnow()) == 2
    assert sorted(flaky_pacs.stored) == sorted([transient, refused, cannot, fine])  # each exactly once
    assert states(db) == {"sent": 4}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s")


def test_a_real_outage_end_to_end_delivers_once_when_orthanc_is_back(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "input-check.yaml").write_text(yaml.safe_dump(INPUT_CHECK_RULES))
    pacs = OrthancServer(tmp_path / "pacs")
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": "spool"},
                "http": {"enabled": False},
                "rules_dir": str(rules),
                "dispatch": {"poll_seconds": 0.2, "base_delay_seconds": 0.5, "max_delay_seconds": 1},
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
    studies = [synthetic_nm() for _ in range(3)]
    files = []
    for n, ds in enumerate(studies):
        path = tmp_path / f"study{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    node = subprocess.Popen(
        [sys.executable, "-m", "scintnode", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    db = Database(f"sqlite:///{tmp_path / 'spool' / 'index.db'}")
    try:
        output = node.stdout
        assert output is not None
        port = next(int(m.group(1)) for line in output if (m := re.search(r"on port (\d+)", line)))
        threading.Thread(target=output.read, daemon=True).start()  # keeps the pipe drained
        with pacs:
            send_files(files[:1], "127.0.0.1", port, "SCINTNODE")
            wait_for(lambda: states(db) == {"sent": 1}, 60, "the first result delivered while the PACS is up")
        # the PACS goes down; two more studies arrive
        send_files(files[1:], "127.0.0.1", port, "SCINTNODE")

        def retried() -> bool:
            with db.session() as session:
                attempts = [d.attempts for d in session.scalars(select(Delivery).where(Delivery.state == "pending"))]
            return len(attempts) == 2 and min(attempts) >= 2

        wait_for(retried, 60, "failed attempts during the outage")
        with pacs:  # back, on the same ports
            wait_for(lambda: states(db) == {"sent": 3}, 60, "every result delivered after the outage")
            held = [pacs.get(f"/instances/{i}/simplified-tags") for i in pacs.get("/instances")]
    finally:
        node.terminate()
        node.wait(timeout=60)
        db.dispose()
    assert node.returncode == 0
    srs = [tags["SOPInstanceUID"] for tags in held]
    assert len(srs) == len(set(srs)) == 3  # one SR per study, none twice
    assert sorted(tags["StudyInstanceUID"] for tags in held) == sorted(str(ds.StudyInstanceUID) for ds in studies)
