"""Tests of the send stage: real pynetdicom Storage SCPs on free ports, a real SQLite file index.

Time moves through deliver_due(now=...), never by sleeping; synthetic Secondary Capture and SR files."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset
from sqlalchemy import func, select

from scintnode.config import Destination, DispatchSettings
from scintnode.db import Database, Delivery, Event, Job, Output, utcnow
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.send import (
    PERMANENT_CONDITIONS,
    TRANSIENT_CONDITIONS,
    Dispatcher,
    Verdict,
    backoff_seconds,
    classify,
    list_deliveries,
    rejection_condition,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"  # synthetic study


# ---------------------------------------------------------------- the PACS: a real pynetdicom Storage SCP


@dataclass
class Received:
    sop_instance_uid: str
    dataset_bytes: bytes
    transfer_syntax: str
    calling_ae: str
    association: int
    implementation: tuple[str, str]  # the requestor's Implementation Class UID and Version Name


@dataclass
class Pacs:
    """Answers C-STOREs with the given statuses in turn (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [0x0000])
    sop_classes: tuple[str, ...] = (SecondaryCaptureImageStorage, BasicTextSRStorage)
    ae_title: str = "PACS"
    hold: threading.Event | None = None  # when set, the handler waits on it: a PACS that does not answer
    received: list[Received] = field(default_factory=list)
    maximum_associations: int = 10
    abort_next: bool = False  # abort the association on the next C-STORE instead of answering

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.maximum_associations = self.maximum_associations
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port: int = self.server.server_address[1]

    def _on_store(self, event: Any) -> int:
        if self.hold is not None:
            self.hold.wait(10)
        if self.abort_next:
            self.abort_next = False
            event.assoc.abort()
            return 0xC000  # never reaches the sender: the association is gone
        with self._lock:
            self.received.append(
                Received(
                    str(event.request.AffectedSOPInstanceUID),
                    event.request.DataSet.getvalue(),
                    str(event.context.transfer_syntax),
                    str(event.assoc.requestor.ae_title),
                    id(event.assoc),
                    (
                        str(event.assoc.requestor.implementation_class_uid),
                        str(event.assoc.requestor.implementation_version_name),
                    ),
                )
            )
            return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def count(self, sop_instance_uid: str) -> int:
        return sum(r.sop_instance_uid == sop_instance_uid for r in self.received)

    def destination(self, ae_title: str | None = None, timeout: float = 3) -> Destination:
        return Destination(
            ae_title=ae_title or self.ae_title, host="127.0.0.1", port=self.port, timeout_seconds=timeout
        )

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()


@pytest.fixture
def pacs_factory() -> Iterator[Any]:
    started: list[Pacs] = []

    def start(**kwargs: Any) -> Pacs:
        pacs = Pacs(**kwargs)
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


def free_port() -> int:
    """A port nothing listens on (bound and closed again), for a PACS that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def down_destination() -> Destination:
    return Destination(ae_title="PACS", host="127.0.0.1", port=free_port(), timeout_seconds=2)


# ---------------------------------------------------------------- the node side: index, spool, outputs


@dataclass
class Node:
    db: Database
    spool: Path
    job_id: int

    def dispatcher(self, destinations: dict[str, Destination], base: float = 5, cap: float = 600) -> Dispatcher:
        settings = DispatchSettings(base_delay_seconds=base, max_delay_seconds=cap, poll_seconds=0.5)
        return Dispatcher(self.db, self.spool, destinations, settings, "SCINTNODE")

    def output(
        self,
        dispatcher: Dispatcher,
        destinations: list[str],
        sop_class: str = SecondaryCaptureImageStorage,
        transfer_syntax: str = ExplicitVRLittleEndian,
    ) -> Output:
        uid = generate_uid()
        relative = f"outputs/{uuid.uuid4().hex}.dcm"
        write_synthetic(self.spool / relative, uid, sop_class, transfer_syntax)
        with self.db.session() as session:
            output = Output(
                sop_instance_uid=uid,
                job_id=self.job_id,
                sop_class_uid=sop_class,
                kind="sc" if sop_class == SecondaryCaptureImageStorage else "sr",
                study_uid=STUDY,
                path=relative,
            )
            session.add(output)
            session.flush()
            dispatcher.enqueue(session, output, destinations)
        return output

    def deliveries(self) -> dict[str, Delivery]:
        with self.db.session() as session:
            return {f"{d.sop_instance_uid}>{d.destination}": d for d in session.scalars(select(Delivery))}

    def delivery(self, output: Output, destination: str = "pacs") -> Delivery:
        return self.deliveries()[f"{output.sop_instance_uid}>{destination}"]

    def events(self, kind: str) -> list[Event]:
        with self.db.session() as session:
            return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def write_synthetic(path: Path, uid: str, sop_class: str, transfer_syntax: str) -> None:
    """A tiny synthetic Secondary Capture or Basic Text SR, saved in the DICOM File Format."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = "SYNTHETIC-001"
    ds.StudyDate = "20240101"
    ds.InstanceNumber = 1
    if sop_class == SecondaryCaptureImageStorage:
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(64))
    else:
        ds.Modality = "SR"
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "126000", "DCM", "Report"
        ds.ConceptNameCodeSequence = [concept]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    with db.session() as session:
        job = Job(
            idempotency_key=uuid.uuid4().hex,
            rule_name="synthetic",
            ruleset_version="v0",
            network="thyroid",
            outputs=["sc"],
            destinations=["pacs"],
            inputs=[],
            study_uid=STUDY,
        )
        session.add(job)
        session.flush()
        job_id = job.id
    yield Node(db, tmp_path / "spool", job_id)
    db.dispose()


def later(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


# ---------------------------------------------------------------- pure functions


def test_classify_every_status_word() -> None:
    for code in range(0x10000):
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF or code in (0x0001, 0x0107, 0x0116):
            expected = Verdict.SENT
        elif 0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0210, 0x0213, 0xFE00):
            expected = Verdict.RETRY
        else:
            expected = Verdict.DEAD
        assert classify(code) is expected, hex(code)
    for code in (0xB000, 0xB006, 0xB007):
        assert classify(code) is Verdict.SENT
    for code in (0xA700, 0xA702, 0xA7FF):
        assert classify(code) is Verdict.RETRY
    for code in (0xA900, 0xA9FF, 0xC000, 0xCFFF, 0x0122, 0x0124, 0x0117, 0xA800, 0xFFFF):
        assert classify(code) is Verdict.DEAD


def test_classify_named_conditions() -> None:
    assert not TRANSIENT_CONDITIONS & PERMANENT_CONDITIONS
    for name in (
        "connection-refused",
        "connection-timeout",
        "host-unreachable",
        "association-aborted",
        "association-rejected-transient",
        "no-response",
    ):
        assert classify(name) is Verdict.RETRY
    for name in ("association-rejected", "context-rejected", "unknown-destination", "file-missing"):
        assert classify(name) is Verdict.DEAD
    with pytest.raises(ValueError, match="unknown delivery condition"):
        classify("gremlins")
    with pytest.raises(ValueError, match="16-bit"):
        classify(0x10000)


@pytest.mark.parametrize(
    ("result", "source", "reason", "expected"),
    [
        (1, 1, 7, "association-rejected"),  # called AE title not recognised
        (1, 1, 3, "association-rejected"),  # calling AE title not recognised
        (1, 1, 1, "association-rejected"),
        (1, 2, 2, "association-rejected"),  # protocol version
        (2, 1, 1, "association-rejected-transient"),
        (2, 3, 2, "association-rejected-transient"),  # local limit exceeded
        (1, 3, 1, "association-rejected-transient"),  # congestion, even if marked permanent
        (1, 3, 2, "association-rejected-transient"),
    ],
)
def test_rejection_condition(result: int, source: int, reason: int, expected: str) -> None:
    assert rejection_condition(result, source, reason) == expected


def test_backoff_doubles_jitters_and_caps() -> None:
    assert backoff_seconds(1, 5, 600, 0.5) == pytest.approx(5)
    assert backoff_seconds(2, 5, 600, 0.5) == pytest.approx(10)
    assert backoff_seconds(3, 5, 600, 0.0) == pytest.approx(16)  # -20 %
    assert backoff_seconds(3, 5, 600, 0.999999) == pytest.approx(24, rel=1e-5)  # +20 %
    assert backoff_seconds(8, 5, 600, 0.5) == pytest.approx(600)  # 640 capped
    assert backoff_seconds(8, 5, 600, 0.999) == 600  # jitter never passes the cap
    assert 480 <= backoff_seconds(10_000, 5, 600, 0.0) <= 600  # no overflow
    with pytest.raises(ValueError, match="at least 1"):
        backoff_seconds(0, 5, 600, 0.5)


# ---------------------------------------------------------------- outcomes against a real peer


def test_success_sends_the_stored_bytes_once(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory()
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    explicit = node.output(dispatcher, ["pacs"])
    implicit = node.output(dispatcher, ["pacs"], transfer_syntax=ImplicitVRLittleEndian)

    assert dispatcher.deliver_due() == 2
    for _ in range(3):
        assert dispatcher.deliver_due(now=later(3600)) == 0

    for output, syntax in ((explicit, ExplicitVRLittleEndian), (implicit, ImplicitVRLittleEndian)):
        assert pacs.count(output.sop_instance_uid) == 1
        got = next(r for r in pacs.received if r.sop_instance_uid == output.sop_instance_uid)
        _, offset = split_dataset(node.spool / output.path)
        assert got.dataset_bytes == (node.spool / output.path).read_bytes()[offset:]
        assert got.transfer_syntax == syntax  # the file's own syntax was proposed, nothing converted
        assert got.calling_ae == "SCINTNODE"
        assert got.implementation == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
        delivery = node.delivery(output)
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("sent", 1, "0x0000")
        assert delivery.sent_at is not None
    assert len({r.association for r in pacs.received}) == 1  # one association for the destination
    delivered = node.events("delivered")
    assert {e.detail["sop_instance_uid"] for e in delivered} == {
        explicit.sop_instance_uid,
        implicit.sop_instance_uid,
    }
    assert all(e.study_uid == STUDY and e.detail["destination"] == "pacs" for e in delivered)


def test_warning_status_counts_as_sent(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(statuses=[0xB000])
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    output = node.output(dispatcher, ["pacs"])
    assert dispatcher.deliver_due() == 1
    delivery = node.delivery(output)
    assert (delivery.state, delivery.last_status) == ("sent", "0xB000")
    assert "Coercion" in delivery.last_error


def test_out_of_resources_retries_later_then_lands(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(statuses=[0xA700, 0x0000])
    dispatcher = node.dispatcher({"pacs": pacs.destination()}, base=5)
    output = node.output(dispatcher, ["pacs"])
    now = later(1)

    assert dispatcher.deliver_due(now=now) == 0
    delivery = node.delivery(output)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, "0xA700")
    assert now + dt.timedelta(seconds=4) <= delivery.next_attempt_at <= now + dt.timedelta(seconds=6)
    assert node.events("delivery-failed")[0].detail["status"] == "0xA700"

    assert dispatcher.deliver_due(now=now + dt.timedelta(seconds=1)) == 0  # not due yet: nothing sent
    assert pacs.count(output.sop_instance_uid) == 1

    assert dispatcher.deliver_due(now=delivery.next_attempt_at) == 1
    delivery = node.delivery(output)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("sent", 2, "0x0000")
    assert pacs.count(output.sop_instance_uid) == 2


@pytest.mark.parametrize("status", [0xA900, 0xC000, 0x0122, 0x0124])
def test_permanent_status_is_a_dead_letter_at_once(node: Node, pacs_factory: Any, status: int) -> None:
    pacs = pacs_factory(statuses=[status])
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    output = node.output(dispatcher, ["pacs"])
    assert dispatcher.deliver_due() == 1
    delivery = node.delivery(output)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("dead", 1, f"0x{status:04X}")
    assert dispatcher.deliver_due(now=later(3600)) == 0
    assert pacs.count(output.sop_instance_uid) == 1
    [dead] = node.events("dead-letter")
    assert dead.detail == {
        "delivery": delivery.id,
        "destination": "pacs",
        "status": f"0x{status:04X}",
        "attempts": 1,
        "sop_instance_uid": output.sop_instance_uid,
        "error": delivery.last_error,
    }


def test_refused_connection_backs_off_with_a_cap(node: Node) -> None:
    dispatcher = node.dispatcher({"pacs": down_destination()}, base=1, cap=4)
    output = node.output(dispatcher, ["pacs"])
    now = later(1)
    delays = []
    for attempt in range(1, 6):
        assert dispatcher.deliver_due(now=now) == 0
        delivery = node.delivery(output)
        assert (delivery.state, delivery.attempts, delivery.last_status) == (
            "pending",
            attempt,
            "connection-refused",
        )
        delays.append((delivery.next_attempt_at - now).total_seconds())
        now = delivery.next_attempt_at
    assert 0.8 <= delays[0] <= 1.2
    assert 1.6 <= delays[1] <= 2.4
    assert delays[0] < delays[1] < delays[2]
    assert all(3.2 <= d <= 4 for d in delays[2:])  # capped at max_delay_seconds
    assert "refused" in node.delivery(output).last_error


@pytest.mark.parametrize("late", [False, True], ids=["sender-on-time", "sender-wakes-after-the-pacs-closed"])
def test_called_ae_title_rejected_is_dead(
    node: Node, pacs_factory: Any, late: bool, request: pytest.FixtureRequest
) -> None:
    if late:
        request.getfixturevalue("late_requestor")  # told from an abort even so
    pacs = pacs_factory()
    dispatcher = node.dispatcher({"pacs": pacs.destination(ae_title="NOT-THE-PACS")})
    output = node.output(dispatcher, ["pacs"])
    assert dispatcher.deliver_due() == 1
    delivery = node.delivery(output)
    assert (delivery.state, delivery.last_status) == ("dead", "association-rejected")
    assert "Called AE title not recognised" in delivery.last_error
    assert pacs.received == []


def test_busy_pacs_rejecting_transiently_is_retried(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(maximum_associations=1)
    holder = AE(ae_title="OTHER")
    holder.add_requested_context(SecondaryCaptureImageStorage)
    held = holder.associate("127.0.0.1", pacs.port, ae_title="PACS")
    assert held.is_established
    try:
        dispatcher = node.dispatcher({"pacs": pacs.destination()})
        output = node.output(dispatcher, ["pacs"])
        assert dispatcher.deliver_due() == 0
        delivery = node.delivery(output)
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert delivery.last_status == "association-rejected-transient"
        assert "Local limit exceeded" in delivery.last_error
    finally:
        held.release()


def test_sop_class_the_pacs_refuses_is_dead_and_the_rest_is_sent(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(sop_classes=(SecondaryCaptureImageStorage,))
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    image = node.output(dispatcher, ["pacs"])
    report = node.output(dispatcher, ["pacs"], sop_class=BasicTextSRStorage)
    assert dispatcher.deliver_due() == 2
    assert node.delivery(image).state == "sent"
    refused = node.delivery(report)
    assert (refused.state, refused.last_status) == ("dead", "context-rejected")
    assert BasicTextSRStorage in refused.last_error
    assert pacs.count(report.sop_instance_uid) == 0


def test_association_with_only_refused_contexts_is_dead(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(sop_classes=(SecondaryCaptureImageStorage,))
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    report = node.output(dispatcher, ["pacs"], sop_class=BasicTextSRStorage)
    assert dispatcher.deliver_due() == 1
    refused = node.delivery(report)
    assert (refused.state, refused.last_status) == ("dead", "context-rejected")


def test_pacs_that_never_answers_is_retried(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(hold=threading.Event())
    dispatcher = node.dispatcher({"pacs": pacs.destination(timeout=0.5)})
    output = node.output(dispatcher, ["pacs"])
    assert dispatcher.deliver_due() == 0
    delivery = node.delivery(output)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, "no-response")


def test_restart_delivers_exactly_once(tmp_path: Path, node: Node, pacs_factory: Any) -> None:
    first = node.dispatcher({"pacs": down_destination()})
    outputs = [node.output(first, ["pacs"]) for _ in range(3)]
    assert first.deliver_due() == 0
    assert {d.state for d in node.deliveries().values()} == {"pending"}
    node.db.dispose()  # the node stops

    pacs = pacs_factory()
    restarted = Node(Database(f"sqlite:///{tmp_path / 'index.db'}"), node.spool, node.job_id)
    second = restarted.dispatcher({"pacs": pacs.destination()})
    assert second.deliver_due() == 0  # still backing off after the failure before the restart
    assert second.deliver_due(now=later(60)) == 3
    for _ in range(3):
        assert second.deliver_due(now=later(7200)) == 0
    assert sorted(r.sop_instance_uid for r in pacs.received) == sorted(o.sop_instance_uid for o in outputs)
    assert {d.state for d in restarted.deliveries().values()} == {"sent"}
    restarted.db.dispose()


def test_two_dispatchers_on_one_database_send_each_once(tmp_path: Path, node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory()
    destination = pacs.destination()
    seed = node.dispatcher({"pacs": destination})
    outputs = [node.output(seed, ["pacs"]) for _ in range(6)]
    other = Node(Database(f"sqlite:///{tmp_path / 'index.db'}"), node.spool, node.job_id)
    dispatchers = [node.dispatcher({"pacs": destination}), other.dispatcher({"pacs": destination})]
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def run(dispatcher: Dispatcher) -> None:
        barrier.wait()
        counts.append(dispatcher.deliver_due())

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 6
    assert all(pacs.count(o.sop_instance_uid) == 1 for o in outputs)
    other.db.dispose()


def test_missing_file_unknown_destination_and_mismatch_are_dead(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory()
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    gone = node.output(dispatcher, ["pacs"])
    (node.spool / gone.path).unlink()
    nowhere = node.output(dispatcher, ["archive"])
    swapped = node.output(dispatcher, ["pacs"])
    write_synthetic(node.spool / swapped.path, generate_uid(), SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    garbled = node.output(dispatcher, ["pacs"])
    (node.spool / garbled.path).write_bytes(b"not DICOM at all")
    assert dispatcher.deliver_due() == 4
    assert node.delivery(gone).last_status == "file-missing"
    assert node.delivery(garbled).last_status == "file-unreadable"
    unknown = node.delivery(nowhere, "archive")
    assert (unknown.state, unknown.last_status) == ("dead", "unknown-destination")
    assert "'archive'" in unknown.last_error
    assert node.delivery(swapped).last_status == "file-mismatch"
    assert pacs.received == []


def test_enqueue_is_idempotent(node: Node) -> None:
    dispatcher = node.dispatcher({"pacs": down_destination(), "archive": down_destination()})
    output = node.output(dispatcher, ["pacs", "pacs", "archive"])
    with node.db.session() as session:
        dispatcher.enqueue(session, output, ["archive", "pacs"])
    with node.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 2


def test_enqueue_commits_with_the_callers_transaction(node: Node) -> None:
    dispatcher = node.dispatcher({"pacs": down_destination()})
    with pytest.raises(RuntimeError), node.db.session() as session:
        output = Output(
            sop_instance_uid=generate_uid(),
            job_id=node.job_id,
            sop_class_uid="1.2",
            kind="sc",
            study_uid=STUDY,
            path="x.dcm",
        )
        session.add(output)
        session.flush()
        dispatcher.enqueue(session, output, ["pacs"])
        raise RuntimeError("the writer failed")
    assert node.deliveries() == {}


def test_resubmit_puts_dead_letters_back(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(statuses=[0xC000, 0xC000, 0x0000])
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    first, second = node.output(dispatcher, ["pacs"]), node.output(dispatcher, ["pacs"])
    assert dispatcher.deliver_due() == 2
    ids = [node.delivery(first).id, node.delivery(second).id]
    assert {row.id for row in list_deliveries(node.db, "dead")} == set(ids)

    assert dispatcher.resubmit([ids[0], 9999]) == 1
    assert dispatcher.resubmit([ids[0]]) == 0  # pending now, not dead
    resubmitted = node.delivery(first)
    assert (resubmitted.state, resubmitted.attempts, resubmitted.last_status) == ("pending", 0, "0xC000")
    assert dispatcher.deliver_due(now=later(1)) == 1
    assert node.delivery(first).state == "sent"

    assert dispatcher.resubmit() == 1  # every dead one: the second
    assert node.delivery(second).state == "pending"
    assert len(node.events("resubmitted")) == 2


def test_abort_mid_batch_leaves_the_rest_due_at_once(node: Node, pacs_factory: Any) -> None:
    pacs = pacs_factory(abort_next=True)
    dispatcher = node.dispatcher({"pacs": pacs.destination()})
    first, second = node.output(dispatcher, ["pacs"]), node.output(dispatcher, ["pacs"])
    now = later(1)
    assert dispatcher.deliver_due(now=now) == 0
    failed, untried = node.delivery(first), node.delivery(second)
    assert (failed.state, failed.attempts, failed.last_status) == ("pending", 1, "no-response")
    assert failed.next_attempt_at > now
    assert (untried.state, untried.attempts, untried.last_status) == ("pending", 0, "")
    assert untried.next_attempt_at <= now  # not held back by its neighbour's failure

    assert dispatcher.deliver_due(now=now) == 1
    assert node.delivery(second).state == "sent"
    assert dispatcher.deliver_due(now=failed.next_attempt_at) == 1
    assert node.delivery(first).state == "sent"
    assert pacs.count(second.sop_instance_uid) == 1
