"""The index: what the node holds and what it must still do, in a SQL database (SQLite by default).

Files in the spool hold content; these tables hold state. Every stage reads and writes its state here,
so a restart resumes where the node stopped. Through SQLAlchemy, so a PostgreSQL URL works too."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


def _not_purged_index(table: str, time_column: str) -> Index:
    """Files retention has not removed yet, oldest first: its pass reads these, not the purged history
    (retention.py; "purged" is its PURGED, kept literal here because the index's condition must be)."""
    condition = text("path != 'purged'")
    return Index(
        f"ix_{table}_not_purged", time_column, "sop_instance_uid", sqlite_where=condition, postgresql_where=condition
    )


def _replaced_index() -> Index:
    """The changed re-sends, by time: retention reads these to remove a first file once its replacement is old,
    and the restart sweep to keep it until then, without reading the rest of the audit trail."""
    condition = text("kind = 'replaced'")
    return Index("ix_events_replaced", "at", sqlite_where=condition, postgresql_where=condition)


class Instance(Base):
    """One stored SOP instance; written before the C-STORE is answered."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text)  # relative to the spool root
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    association_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    routed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)

    __table_args__ = (_not_purged_index("instances", "received_at"),)


class Series(Base):
    """Completion state of a series (NM objects complete on arrival and skip this wait)."""

    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # set when the association that last delivered to this series was released by its sender
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    completed_by: Mapped[str] = mapped_column(String(32), default="")  # nm-object | release-quiet | long-quiet


class Job(Base):
    """One run of one network on one set of inputs; the idempotency key makes a set run once."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    rule_name: Mapped[str] = mapped_column(String(128))
    ruleset_version: Mapped[str] = mapped_column(String(64))
    network: Mapped[str] = mapped_column(String(64))
    outputs: Mapped[list[str]] = mapped_column(JSON)  # e.g. ["sr", "sc"]
    destinations: Mapped[list[str]] = mapped_column(JSON)
    inputs: Mapped[list[str]] = mapped_column(JSON)  # SOP Instance UIDs
    slots: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # episode slot of each input
    episode_id: Mapped[int | None] = mapped_column(ForeignKey("episodes.id"), nullable=True, index=True)
    supersedes_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its SR becomes a predecessor
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|running|done|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    inference_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Episode(Base):
    """Inputs of one network gathered across series, studies and days for one patient (a rule's `episode`)."""

    __tablename__ = "episodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_name: Mapped[str] = mapped_column(String(128), index=True)
    join_key: Mapped[str] = mapped_column(String(160), index=True)  # Patient ID + Issuer of Patient ID
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open | ran | gave-up
    ruleset_version: Mapped[str] = mapped_column(String(64))
    first_acquired_at: Mapped[dt.datetime] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deadline_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    deadline_reported: Mapped[bool] = mapped_column(default=False)
    last_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str] = mapped_column(Text, default="")


class EpisodeMember(Base):
    """One instance in one slot of an episode; `unit` groups the instances of one input (an NM object or series)."""

    __tablename__ = "episode_members"
    __table_args__ = (UniqueConstraint("episode_id", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id"), index=True)
    slot: Mapped[str] = mapped_column(String(32))
    unit: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)  # what the episode's constraints read from it
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Output(Base):
    """A DICOM object the node wrote for a job (SR, SC, SEG), kept in the spool until delivered."""

    __tablename__ = "outputs"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # sr | sc | seg
    study_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the spool root
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (_not_purged_index("outputs", "created_at"),)


class Delivery(Base):
    """A durable queue entry: one output to one destination, retried until it lands or is dead-lettered."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(ForeignKey("outputs.sop_instance_uid"), index=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|sent|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    last_status: Mapped[str] = mapped_column(String(64), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class RuleSetRecord(Base):
    """Every rule set the node has run, with its files, so history and diffs outlive the files on disk."""

    __tablename__ = "rule_sets"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    directory: Mapped[str] = mapped_column(Text)
    files: Mapped[dict[str, str]] = mapped_column(JSON)  # file name -> text
    first_active_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_active_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Event(Base):
    """Append-only audit trail per study: received, complete, matched, inferred, written, delivered."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (_replaced_index(),)


# Events written in bulk (the receiver's group commit, a routing pass): one compiled statement for all rows.
INSERT_EVENTS = insert(cast(Table, Event.__table__))
# A changed re-send's first file, kept beside the new one: its `replaced` event names it (receive_index.py). The
# restart sweep keeps these files and retention removes them, both reading them through ix_events_replaced.
REPLACED_FIRST_FILE = Event.detail["old_path"].as_string()
REPLACED_FIRST_FILES = select(REPLACED_FIRST_FILE).where(Event.kind == "replaced")


def in_list_chunks(values: list[str], size: int = 500) -> list[list[str]]:
    """`values` in pieces small enough for one IN list: SQLite limits the parameters of a statement, and a CT
    job has hundreds of inputs."""
    return [values[i : i + size] for i in range(0, len(values), size)]


def event_row(study_uid: str, kind: str, at: dt.datetime, **detail: Any) -> dict[str, Any]:
    """An audit event as a row for INSERT_EVENTS: what `Database.record_event` adds, for bulk inserts."""
    return {"study_uid": study_uid, "at": at, "kind": kind, "detail": detail}


class Database:
    """Engine and session factory; one per node."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # the receiver's connection threads share the engine; SQLite serialises writers itself
            connect_args = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create the tables, and the indexes a later release added to tables an earlier one made."""
        Base.metadata.create_all(self.engine)
        existing = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            have = {index["name"] for index in existing.get_indexes(table.name)}
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                if index.name not in have:
                    log.info("adding index %s to the %s table (once; this release uses it)", index.name, table.name)
                    index.create(self.engine, checkfirst=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def record_event(self, session: Session, study_uid: str, kind: str, **detail: Any) -> None:
        session.add(Event(study_uid=study_uid, kind=kind, detail=detail))

    def dispose(self) -> None:
        self.engine.dispose()


class _Ticket(Generic[T]):
    __slots__ = ("done", "error", "item")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Commits what many threads submit, a batch per transaction: one fsync for many.

    The first submitter to find no commit under way commits everything queued so far, its own item
    included, while later submitters queue for the next batch; alone, a thread commits its own item with
    no hand-off. `submit` returns only once the transaction holding its item has committed, and raises
    that transaction's error otherwise: every submitter of a failed batch sees the failure."""

    def __init__(self, engine: Engine, write: Callable[[Connection, list[T]], None], max_batch: int = 256) -> None:
        self.engine = engine
        self.write = write
        self.max_batch = max_batch
        self._pending: list[_Ticket[T]] = []
        self._changed = threading.Condition()
        self._committing = False
        self._connection: Connection | None = None  # used only by the thread committing
        self.batches = 0  # committed transactions, for tests

    def submit(self, item: T) -> None:
        ticket = _Ticket(item)
        with self._changed:
            self._pending.append(ticket)
            while not ticket.done:
                if self._committing:
                    self._changed.wait()
                    continue
                self._committing = True
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._changed.release()
                try:
                    self._commit(batch)
                finally:
                    self._changed.acquire()
                    self._committing = False
                    self._changed.notify_all()
        if ticket.error is not None:
            raise ticket.error

    def close(self) -> None:
        """Close the connection between batches (a later submit opens a new one)."""
        with self._changed:
            while self._committing:
                self._changed.wait()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _commit(self, batch: list[_Ticket[T]]) -> None:
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            with self._connection.begin():
                self.write(self._connection, [ticket.item for ticket in batch])
            self.batches += 1
        except BaseException as exc:  # every waiter must be released, whatever happened
            log.debug("group commit of %d item(s) failed: %s", len(batch), exc)
            self._drop_connection()
            for ticket in batch:
                ticket.error = exc
        for ticket in batch:
            ticket.done = True

    def _drop_connection(self) -> None:
        # after a failure the connection may be unusable; the next batch opens a fresh one
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # closing a broken connection may fail too; it is dropped either way
                log.debug("closing a failed connection raised", exc_info=True)
            self._connection = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an answered C-STORE must survive power loss
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
