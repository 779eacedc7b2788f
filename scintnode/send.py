"""Send: the last stage, a durable C-STORE queue that pushes written outputs (SR, SC, SEG) to each PACS.

Deliveries live in the index; each call sends what is due, one association per destination, and records
each outcome once known, so a restart neither loses a result nor sends an acknowledged one again."""

from __future__ import annotations

import datetime as dt
import enum
import logging
import random
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from scintnode.config import Destination, DispatchSettings
from scintnode.db import Database, Delivery, Output, utcnow
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.requestor import associate

log = logging.getLogger(__name__)

JITTER = 0.2  # ±20 % spreads retries of many deliveries after a PACS outage
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8 9.3.2.2)
MAX_DUE_PER_CALL = 1000  # bounds one call; what is left over is still due on the next


class Verdict(enum.StrEnum):
    SENT = "sent"  # the PACS holds it: never send again
    RETRY = "retry"  # stays pending with a backoff
    DEAD = "dead"  # dead letter: a person must act, then resubmit


# Conditions that are not a C-STORE status word; stored in Delivery.last_status as they are.
TRANSIENT_CONDITIONS = frozenset(
    {
        "connection-refused",
        "connection-timeout",
        "host-unreachable",
        "host-unknown",  # DNS can be down for a while too
        "connection-failed",
        "association-aborted",
        "association-rejected-transient",
        "no-response",
        "send-error",
    }
)
PERMANENT_CONDITIONS = frozenset(
    {
        "association-rejected",
        "context-rejected",
        "unknown-destination",
        "file-missing",
        "file-unreadable",
        "file-mismatch",
    }
)

# PS3.7 Annex C warnings: the PACS stored the instance, perhaps with changes
_GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
# Failures that describe the PACS's state rather than the object: processing failure, resource limitation,
# duplicate invocation (a message-ID clash on that association), cancel
_TRANSIENT_GENERAL = frozenset({0x0110, 0x0210, 0x0213, 0xFE00})


def classify(status: int | str) -> Verdict:
    """Decide what a C-STORE status word (0x0000..0xFFFF) or a named condition means for a delivery.

    Unknown failure words are dead letters: retrying forever would hide a problem a person must see."""
    if isinstance(status, str):
        if status in TRANSIENT_CONDITIONS:
            return Verdict.RETRY
        if status in PERMANENT_CONDITIONS:
            return Verdict.DEAD
        raise ValueError(f"unknown delivery condition {status!r}")
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"C-STORE status {status!r} is not a 16-bit value")
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF or status in _GENERAL_WARNINGS:
        return Verdict.SENT
    if 0xA700 <= status <= 0xA7FF or status in _TRANSIENT_GENERAL:
        return Verdict.RETRY
    return Verdict.DEAD  # 0xA9xx, 0xCxxx, 0x0122, 0x0124, 0x0117 and anything unknown


def rejection_condition(result: int, source: int, reason: int) -> str:
    """Name an A-ASSOCIATE-RJ: transient when the peer says so or reports congestion / a local limit."""
    congestion = source == 3 and reason in (1, 2)
    return "association-rejected-transient" if result == 2 or congestion else "association-rejected"


def backoff_seconds(attempts: int, base: float, maximum: float, draw: float) -> float:
    """Delay after the `attempts`-th failed try: base·2^(attempts-1), jittered by ±20 % and capped at maximum.

    `draw` is a uniform number in [0, 1); the caller supplies it so this stays a pure function."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    delay = min(maximum, base * 2.0 ** min(attempts - 1, 60))  # the exponent cap avoids float overflow
    return min(maximum, delay * (1 - JITTER + 2 * JITTER * draw))


def status_text(status: int) -> str:
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    return f"{known[0]}: {known[1]}".rstrip(": ") if known else "unknown status"


@dataclass(frozen=True)
class DeliveryRow:
    """A delivery as shown by `scintnode deliveries list`."""

    id: int
    destination: str
    state: str
    attempts: int
    last_status: str
    last_error: str
    next_attempt_at: dt.datetime
    sop_instance_uid: str
    study_uid: str


@dataclass(frozen=True)
class _Due:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    destination: str
    attempts: int
    study_uid: str
    path: str


@dataclass(frozen=True)
class _Ready:
    due: _Due
    file: Path
    sop_class_uid: str
    transfer_syntax: str


@dataclass(frozen=True)
class _Outcome:
    status: str  # "0xA700" or a condition name
    verdict: Verdict
    error: str


def _naive_utc(moment: dt.datetime | None) -> dt.datetime:
    if moment is None:
        return utcnow()
    if moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment  # the index stores naive UTC


def _condition(name: str, error: str) -> _Outcome:
    return _Outcome(name, classify(name), error)


def _status_outcome(code: int, comment: str) -> _Outcome:
    error = f"{status_text(code)}" + (f" ({comment})" if comment else "")
    return _Outcome(f"0x{code:04X}", classify(code), error)


class Dispatcher:
    """Sends pending deliveries; enqueue runs in the writer's transaction, deliver_due on the scheduler."""

    def __init__(
        self,
        db: Database,
        spool_root: Path,
        destinations: Mapping[str, Destination],
        settings: DispatchSettings,
        calling_ae_title: str,
    ) -> None:
        self.db = db
        self.spool_root = Path(spool_root)
        self.destinations = dict(destinations)
        self.settings = settings
        self.calling_ae_title = calling_ae_title
        self._random = random.Random()

    def enqueue(self, session: Session, output: Output, destinations: Sequence[str]) -> None:
        """Queue `output` for each destination inside the caller's transaction; existing pairs are kept."""
        existing = set(
            session.scalars(select(Delivery.destination).where(Delivery.sop_instance_uid == output.sop_instance_uid))
        )
        now = utcnow()
        for name in dict.fromkeys(destinations):
            if name in existing:
                continue
            if name not in self.destinations:
                log.warning(
                    "output %s queued for unknown destination %r: it will be dead-lettered",
                    output.sop_instance_uid,
                    name,
                )
            session.add(
                Delivery(
                    sop_instance_uid=output.sop_instance_uid,
                    destination=name,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )

    def deliver_due(self, now: dt.datetime | None = None) -> int:
        """Send every due pending delivery, one association per destination; returns how many became
        sent or dead (a retry stays pending and is not counted)."""
        now = _naive_utc(now)
        changed = 0
        due_by_destination: dict[str, list[_Due]] = {}
        for due in self._select_due(now):
            due_by_destination.setdefault(due.destination, []).append(due)
        for name, batch in due_by_destination.items():
            destination = self.destinations.get(name)
            if destination is None:
                known = ", ".join(sorted(self.destinations)) or "none"
                outcome = _condition(
                    "unknown-destination",
                    f"destination {name!r} is not in the configuration (configured: {known})",
                )
                changed += sum(self._finish_unclaimed(due, outcome, now) for due in batch)
                continue
            changed += self._deliver_to(name, destination, batch, now)
        return changed

    def resubmit(self, delivery_ids: Sequence[int] | None = None, now: dt.datetime | None = None) -> int:
        """Put dead letters back in the queue (the given ids, or every dead one); returns how many."""
        return resubmit_deliveries(self.db, delivery_ids, now)

    def _select_due(self, now: dt.datetime) -> list[_Due]:
        with self.db.session() as session:
            rows = session.execute(
                select(
                    Delivery.id,
                    Delivery.sop_instance_uid,
                    Output.sop_class_uid,
                    Delivery.destination,
                    Delivery.attempts,
                    Output.study_uid,
                    Output.path,
                )
                .join(Output, Output.sop_instance_uid == Delivery.sop_instance_uid)
                .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
                # fewest attempts first, so one instance that upsets the PACS does not block the rest
                .order_by(Delivery.destination, Delivery.attempts, Delivery.id)
                .limit(MAX_DUE_PER_CALL)
            ).all()
        return [_Due(*row) for row in rows]

    def _deliver_to(self, name: str, destination: Destination, batch: list[_Due], now: dt.datetime) -> int:
        changed = 0
        ready: list[_Ready] = []
        contexts: dict[tuple[str, str], None] = {}
        for due in batch:
            checked = self._check_file(due)
            if isinstance(checked, _Outcome):
                changed += self._finish_unclaimed(due, checked, now)
                continue
            key = (checked.sop_class_uid, checked.transfer_syntax)
            if key not in contexts and len(contexts) == MAX_CONTEXTS:
                continue  # stays due; goes on a later association
            contexts[key] = None
            ready.append(checked)
        if not ready:
            return changed

        # The claim moves next_attempt_at past the send's worst case: another process sharing the
        # database sees the rows as not due, and a crash mid-send makes them due again after the lease.
        lease_until = now + dt.timedelta(seconds=destination.timeout_seconds * (len(ready) + 3) + 60)
        claimed = self._claim(ready, now, lease_until)
        if not claimed:
            return changed
        # presentation contexts for exactly the SOP classes and transfer syntaxes being sent
        wanted = list(dict.fromkeys((item.sop_class_uid, item.transfer_syntax) for item in claimed))

        def record(item: _Ready, outcome: _Outcome) -> None:
            nonlocal changed
            changed += self._finish(item.due, outcome, now, Delivery.next_attempt_at == lease_until)

        try:
            untried = self._send_batch(name, destination, claimed, wanted, record)
        except Exception:
            # a fault of this code, not of the PACS: hand back what has no outcome yet rather than sit on it
            log.exception("sending to %s failed unexpectedly", name)
            untried = claimed
        if untried:
            # the association ended under them without a verdict of their own: due again at once
            self._release(untried, now, lease_until)
        return changed

    def _check_file(self, due: _Due) -> _Ready | _Outcome:
        path = self.spool_root / due.path
        if not path.is_file():
            return _condition("file-missing", f"{path} is not in the spool (purged or moved?)")
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop_instance = str(meta.MediaStorageSOPInstanceUID)
            transfer_syntax = str(meta.TransferSyntaxUID)
        except Exception as exc:  # pydicom raises several types for a damaged file
            return _condition("file-unreadable", f"{path}: no usable DICOM File Meta: {exc}")
        if sop_instance != due.sop_instance_uid or sop_class != due.sop_class_uid:
            return _condition(
                "file-mismatch",
                f"{path} holds {sop_class} / {sop_instance}, the index expects "
                f"{due.sop_class_uid} / {due.sop_instance_uid}",
            )
        return _Ready(due, path, sop_class, transfer_syntax)

    def _claim(self, ready: list[_Ready], now: dt.datetime, lease_until: dt.datetime) -> list[_Ready]:
        claimed = []
        with self.db.session() as session:
            for item in ready:
                result = cast(
                    CursorResult[Any],
                    session.execute(
                        update(Delivery)
                        .where(
                            Delivery.id == item.due.id,
                            Delivery.state == "pending",
                            Delivery.next_attempt_at <= now,
                        )
                        .values(next_attempt_at=lease_until, updated_at=now)
                        .execution_options(synchronize_session=False)
                    ),
                )
                if result.rowcount == 1:
                    claimed.append(item)
        return claimed

    def _release(self, items: Iterable[_Ready], now: dt.datetime, lease_until: dt.datetime) -> None:
        with self.db.session() as session:
            for item in items:
                session.execute(
                    update(Delivery)
                    .where(
                        Delivery.id == item.due.id,
                        Delivery.state == "pending",
                        Delivery.next_attempt_at == lease_until,
                    )
                    .values(next_attempt_at=now, updated_at=now)
                    .execution_options(synchronize_session=False)
                )

    def _send_batch(
        self,
        name: str,
        destination: Destination,
        items: list[_Ready],
        contexts: list[tuple[str, str]],
        record: Callable[[_Ready, _Outcome], None],
    ) -> list[_Ready]:
        """Open one association, send each file, record each outcome; returns the items left untried."""
        # Hand pynetdicom the file path and it streams the stored bytes after the File Meta, unchanged,
        # instead of decoding and re-encoding them. The flag only affects sends given a path.
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title=destination.calling_ae_title or self.calling_ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        timeout = destination.timeout_seconds
        ae.connection_timeout = timeout
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        connected: list[bool] = []
        assoc, rejection = associate(
            ae,
            destination.host,
            destination.port,
            contexts=[build_context(sop_class, [syntax]) for sop_class, syntax in contexts],
            ae_title=destination.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.append(_no_delay(event)))],
        )
        where = f"{name} ({destination.ae_title}@{destination.host}:{destination.port})"
        if not assoc.is_established:
            outcome = self._association_failure(assoc, rejection, destination, bool(connected), where)
            for item in items:
                record(item, outcome)
            return []

        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        untried: list[_Ready] = []
        try:
            for index, item in enumerate(items):
                if (item.sop_class_uid, item.transfer_syntax) not in accepted:
                    record(item, _condition("context-rejected", _context_error(item, where)))
                    continue
                if not assoc.is_established:
                    untried = items[index:]
                    break
                record(item, _send_one(assoc, item, where, timeout))
        finally:
            if assoc.is_established:
                assoc.release()
        return untried

    def _association_failure(
        self, assoc: Association, rsp: A_ASSOCIATE | None, destination: Destination, connected: bool, where: str
    ) -> _Outcome:
        if rsp is not None:
            name = rejection_condition(int(rsp.result), int(rsp.result_source), int(rsp.diagnostic))
            return _condition(
                name,
                f"{where} rejected the association: {rsp.result_str}, {rsp.source_str}, {rsp.reason_str}",
            )
        if connected and assoc.rejected_contexts and not assoc.accepted_contexts:
            offered = ", ".join(
                f"{cx.abstract_syntax.name} in {cx.transfer_syntax[0].name}" for cx in assoc.rejected_contexts
            )
            return _condition(
                "context-rejected",
                f"{where} accepted none of the presentation contexts ({offered}): "
                "configure the PACS to accept these SOP classes",
            )
        if connected:
            return _condition(
                "association-aborted",
                f"{where} accepted the connection but aborted or did not answer the association request "
                f"within {destination.timeout_seconds:g} s",
            )
        return _diagnose_connection(destination, where)

    def _finish_unclaimed(self, due: _Due, outcome: _Outcome, now: dt.datetime) -> int:
        # still due means no other process has claimed it meanwhile
        return self._finish(due, outcome, now, Delivery.next_attempt_at <= now)

    def _finish(self, due: _Due, outcome: _Outcome, now: dt.datetime, guard: ColumnElement[bool]) -> int:
        """Record one outcome in its own transaction; returns 1 when the delivery left the pending state."""
        attempts = due.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status": outcome.status,
            "last_error": outcome.error,
            "updated_at": now,
        }
        delay = 0.0
        if outcome.verdict is Verdict.SENT:
            values.update(state="sent", sent_at=now)
            kind = "delivered"
        elif outcome.verdict is Verdict.DEAD:
            values.update(state="dead")
            kind = "dead-letter"
        else:
            delay = backoff_seconds(
                attempts,
                self.settings.base_delay_seconds,
                self.settings.max_delay_seconds,
                self._random.random(),
            )
            values.update(next_attempt_at=now + dt.timedelta(seconds=delay))
            kind = "delivery-failed"
        with self.db.session() as session:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(Delivery)
                    .where(Delivery.id == due.id, Delivery.state == "pending", guard)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                ),
            )
            if result.rowcount != 1:
                log.warning(
                    "delivery %d of %s changed under this dispatcher; outcome %s not recorded",
                    due.id,
                    due.sop_instance_uid,
                    outcome.status,
                )
                return 0
            detail: dict[str, Any] = {
                "delivery": due.id,
                "destination": due.destination,
                "status": outcome.status,
                "attempts": attempts,
                "sop_instance_uid": due.sop_instance_uid,
            }
            if outcome.verdict is not Verdict.SENT or outcome.status != "0x0000":
                detail["error"] = outcome.error
            self.db.record_event(session, due.study_uid, kind, **detail)
        if outcome.verdict is Verdict.SENT:
            log.info(
                "delivered %s to %s: %s (attempt %d)",
                due.sop_instance_uid,
                due.destination,
                outcome.status,
                attempts,
            )
            return 1
        if outcome.verdict is Verdict.DEAD:
            log.error(
                "dead letter: %s to %s: %s: %s (attempt %d); fix, then `scintnode deliveries resubmit %d`",
                due.sop_instance_uid,
                due.destination,
                outcome.status,
                outcome.error,
                attempts,
                due.id,
            )
            return 1
        log.warning(
            "delivery of %s to %s failed: %s: %s (attempt %d, next in %.0f s)",
            due.sop_instance_uid,
            due.destination,
            outcome.status,
            outcome.error,
            attempts,
            delay,
        )
        return 0


def _no_delay(event: evt.Event) -> bool:
    # pynetdicom writes a C-STORE as several small PDUs; with Nagle's algorithm each waits ~40 ms for an ACK
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        try:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            log.debug("TCP_NODELAY not available on this socket")
    return True


def _context_error(item: _Ready, where: str) -> str:
    return (
        f"{where} did not accept SOP class {item.sop_class_uid} in transfer syntax {item.transfer_syntax}: "
        "configure the PACS to accept it (a configuration error, not retried)"
    )


def _send_one(assoc: Association, item: _Ready, where: str, timeout: float) -> _Outcome:
    try:
        rsp = assoc.send_c_store(item.file)
    except FileNotFoundError:
        return _condition("file-missing", f"{item.file} vanished from the spool while sending")
    except Exception as exc:  # pynetdicom and the socket layer raise many types; none must stop the queue
        log.exception("sending %s to %s raised", item.due.sop_instance_uid, where)
        return _condition("send-error", f"{type(exc).__name__}: {exc}")
    if "Status" not in rsp:
        return _condition(
            "no-response",
            f"{where} sent no C-STORE response within {timeout:g} s (or aborted the association)",
        )
    comment = str(rsp.get("ErrorComment", "") or "")
    return _status_outcome(int(rsp.Status), comment)


def _diagnose_connection(destination: Destination, where: str) -> _Outcome:
    """pynetdicom only logs why TCP failed; one short probe names it (refused, timeout, unreachable)."""
    try:
        with socket.create_connection((destination.host, destination.port), min(destination.timeout_seconds, 5)):
            pass
    except ConnectionRefusedError:
        return _condition("connection-refused", f"{where} refused the connection: is the PACS running?")
    except TimeoutError:
        return _condition("connection-timeout", f"{where} did not accept a connection in time (firewall or host down?)")
    except socket.gaierror as exc:
        return _condition("host-unknown", f"{where}: cannot resolve host name: {exc}")
    except OSError as exc:
        return _condition("host-unreachable", f"{where} is unreachable: {exc}")
    return _condition("connection-failed", f"{where}: the connection failed once, then opened: restarting?")


def list_deliveries(db: Database, state: str | None = None) -> list[DeliveryRow]:
    """Deliveries, oldest first, with their output's study."""
    query = (
        select(
            Delivery.id,
            Delivery.destination,
            Delivery.state,
            Delivery.attempts,
            Delivery.last_status,
            Delivery.last_error,
            Delivery.next_attempt_at,
            Delivery.sop_instance_uid,
            Output.study_uid,
        )
        .join(Output, Output.sop_instance_uid == Delivery.sop_instance_uid)
        .order_by(Delivery.id)
    )
    if state is not None:
        query = query.where(Delivery.state == state)
    with db.session() as session:
        return [DeliveryRow(*row) for row in session.execute(query).all()]


def resubmit_deliveries(db: Database, delivery_ids: Sequence[int] | None = None, now: dt.datetime | None = None) -> int:
    """Dead letters back to pending, attempts reset, due at once: the given ids (only those that are dead)
    or, with None, every dead delivery. Returns how many were resubmitted."""
    moment = _naive_utc(now)
    condition: list[ColumnElement[bool]] = [Delivery.state == "dead"]
    if delivery_ids is not None:
        if not delivery_ids:
            return 0
        condition.append(Delivery.id.in_(list(delivery_ids)))
    with db.session() as session:
        rows = session.execute(
            select(
                Delivery.id,
                Delivery.destination,
                Delivery.sop_instance_uid,
                Delivery.last_status,
                Output.study_uid,
            )
            .join(Output, Output.sop_instance_uid == Delivery.sop_instance_uid)
            .where(*condition)
        ).all()
        count = 0
        for delivery_id, destination, sop_instance_uid, last_status, study_uid in rows:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id, Delivery.state == "dead")
                    .values(state="pending", attempts=0, next_attempt_at=moment, updated_at=moment)
                    .execution_options(synchronize_session=False)
                ),
            )
            if result.rowcount == 1:
                count += 1
                db.record_event(
                    session,
                    study_uid,
                    "resubmitted",
                    delivery=delivery_id,
                    destination=destination,
                    sop_instance_uid=sop_instance_uid,
                    previous_status=last_status,
                )
    if count:
        log.info("resubmitted %d dead letter(s)", count)
    return count
