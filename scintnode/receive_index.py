"""The receiver's index writes: what one stored instance or one released association puts in the index, and
the batch writer the group commit runs (`db.GroupCommit`), in Core statements built once.

Receive stage, between the spool and the answer to the sender: a C-STORE is answered only after the batch
holding its row has committed."""

from __future__ import annotations

import functools
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from scintnode import receive_index_sqlite
from scintnode.db import (
    INSERT_EVENTS,
    REPLACED_FIRST_FILE,
    REPLACED_FIRST_FILES,
    Database,
    Instance,
    Series,
    event_row,
    in_list_chunks,
    utcnow,
)
from scintnode.spool import Spool, StoredFile

log = logging.getLogger(__name__)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
NM_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.5"


@dataclass
class AssociationLog:
    """One association as the receiver tracks it: who sent, what was stored or refused, which series."""

    association_id: str
    calling_ae: str
    address: str
    series: set[str] = field(default_factory=set)
    stored: int = 0
    rejected: int = 0
    release_recorded: bool = False


@dataclass(frozen=True)
class Header:
    """The identifying attributes read from an instance's header."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    transfer_syntax: str


@dataclass
class StoreWrite:
    """An index write for one stored instance; `duplicate` is set by the writer for an identical re-send."""

    header: Header
    stored: StoredFile
    entry: AssociationLog | None
    duplicate: bool = False


@dataclass
class ReleaseWrite:
    """The sender released an association: its series start their release-quiet period."""

    series_uids: frozenset[str]


_INSTANCES = cast(Table, Instance.__table__)
_SERIES = cast(Table, Series.__table__)
# built once: SQLAlchemy then reuses their compiled form instead of building and keying a statement per call
_KNOWN_FILES = select(_INSTANCES.c.sop_instance_uid, _INSTANCES.c.sha256, _INSTANCES.c.path).where(
    _INSTANCES.c.sop_instance_uid.in_(bindparam("uids", expanding=True))
)
_INSERT_INSTANCES = insert(_INSTANCES)
_REPLACE_INSTANCE = (
    update(_INSTANCES)
    .where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
    .values(
        path=bindparam("path"),
        sha256=bindparam("sha256"),
        size=bindparam("size"),
        received_at=bindparam("now"),
        routed_at=None,
    )
)
_RELEASE_SERIES = (
    update(_SERIES)
    .where(_SERIES.c.series_uid.in_(bindparam("series_uids", expanding=True)), _SERIES.c.completed_at.is_(None))
    .values(released_at=bindparam("now"))
)


def write_index_batch(connection: Connection, items: list[StoreWrite | ReleaseWrite]) -> None:
    """Index a batch in submission order, in the caller's transaction, with a few set-wise statements.

    Each store's file and name are already durable (`Spool.store_input`), so no committed row can point at a
    file a crash could still undo."""
    stores: list[StoreWrite] = []
    for item in items:
        if isinstance(item, StoreWrite):
            stores.append(item)
            continue
        _write_stores(connection, stores)
        stores = []
        connection.execute(_RELEASE_SERIES, {"series_uids": sorted(item.series_uids), "now": utcnow()})
    _write_stores(connection, stores)


def remove_unindexed_inputs(db: Database, spool: Spool) -> int:
    """Remove the inputs an earlier run wrote into slots but never indexed (it stopped between the file's fsync
    and the commit, so the sender was not answered 0x0000 and still holds the instance); returns how many."""
    written = spool.written_at_start
    indexed: set[str] = set()
    with db.engine.connect() as connection:
        for chunk in in_list_chunks(written):
            indexed.update(connection.scalars(select(_INSTANCES.c.path).where(_INSTANCES.c.path.in_(chunk))))
        unindexed = [path for path in written if path not in indexed]
        # a changed re-send keeps the first file, which its `replaced` event names, until retention removes it
        for chunk in in_list_chunks(unindexed):
            indexed.update(connection.scalars(REPLACED_FIRST_FILES.where(REPLACED_FIRST_FILE.in_(chunk))))
    unindexed = [path for path in unindexed if path not in indexed]
    for path in unindexed:
        spool.remove(path)
    if unindexed:
        log.warning("removed %d input file(s) an earlier run wrote but never indexed nor acknowledged", len(unindexed))
    return len(unindexed)


def sqlite_driver(connection: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection under a SQLite index, whose stores take `receive_index_sqlite`; None otherwise."""
    if connection.dialect.name != "sqlite":
        return None
    return cast(sqlite3.Connection, connection.connection.driver_connection)


def _write_stores(connection: Connection, stores: list[StoreWrite]) -> None:
    if not stores:
        return
    uids = sorted({s.header.sop_instance_uid for s in stores})
    driver = sqlite_driver(connection)
    if driver is not None:
        rows = _plan_rows(
            stores, receive_index_sqlite.known_files(driver, uids), receive_index_sqlite.timestamp(utcnow())
        )
        receive_index_sqlite.write_rows(driver, rows.new_instances, rows.replaced, rows.series, rows.events)
        return
    known = {row.sop_instance_uid: (row.sha256, row.path) for row in connection.execute(_KNOWN_FILES, {"uids": uids})}
    rows = _plan_rows(stores, known, utcnow())
    if rows.new_instances:
        connection.execute(_INSERT_INSTANCES, rows.new_instances)
    if rows.replaced:
        connection.execute(_REPLACE_INSTANCE, rows.replaced)
    for reopen, series_rows in rows.series.items():
        if series_rows:
            connection.execute(_series_upsert(connection.dialect.name, reopen), series_rows)
    if rows.events:
        connection.execute(INSERT_EVENTS, rows.events)


@dataclass
class _IndexRows:
    """The rows one batch of stores adds or changes, by statement."""

    new_instances: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    series: dict[bool, list[dict[str, Any]]] = field(default_factory=dict)  # by whether it reopens the series
    events: list[dict[str, Any]] = field(default_factory=list)


def _plan_rows(stores: list[StoreWrite], known: dict[str, tuple[str, str]], now: Any) -> _IndexRows:
    """Decide each store's rows; an identical re-send is marked duplicate and adds none. `known` holds each
    indexed instance's content hash and file. `now` is written as given: a datetime for SQLAlchemy, text for
    the sqlite3 path."""
    rows = _IndexRows()
    series: dict[str, dict[str, Any]] = {}
    for store in stores:
        header, stored, entry = store.header, store.stored, store.entry
        uid = header.sop_instance_uid
        previous, previous_path = known.get(uid, (None, None))
        if previous == stored.sha256:
            store.duplicate = True
            log.info("duplicate of instance %s ignored (identical content)", uid)
            continue
        calling_ae, address = (entry.calling_ae, entry.address) if entry else ("", "")
        if previous is None:
            rows.new_instances.append(_instance_row(header, stored, entry, now))
        else:
            log.warning("instance %s re-sent with different content; keeping both files, indexing the new one", uid)
            rows.events.append(
                event_row(
                    header.study_uid,
                    "replaced",
                    now,
                    sop_instance_uid=uid,
                    old_sha256=previous,
                    new_sha256=stored.sha256,
                    old_path=previous_path,  # the first file is kept until retention removes it
                )
            )
            rows.replaced.append(
                {"uid": uid, "path": stored.path, "sha256": stored.sha256, "size": stored.size, "now": now}
            )
        known[uid] = (stored.sha256, stored.path)
        row = series.setdefault(
            header.series_uid,
            {"series_uid": header.series_uid, "study_uid": header.study_uid, "modality": header.modality}
            | {"instance_count": 0, "first_received_at": now, "last_received_at": now, "reopen": False},
        )
        row["instance_count"] += 1
        # late data reopens a completed series, except an NM object, which is complete by itself
        row["reopen"] = row["reopen"] or not is_nm_object(header.sop_class_uid, header.modality)
        rows.events.append(
            event_row(
                header.study_uid,
                "received",
                now,
                sop_instance_uid=uid,
                series_uid=header.series_uid,
                calling_ae=calling_ae,
                address=address,
            )
        )
    for reopen in (False, True):
        rows.series[reopen] = [
            {k: v for k, v in row.items() if k != "reopen"} for row in series.values() if row["reopen"] == reopen
        ]
    return rows


def _instance_row(header: Header, stored: StoredFile, entry: AssociationLog | None, now: Any) -> dict[str, Any]:
    return {
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "study_uid": header.study_uid,
        "series_uid": header.series_uid,
        "patient_id": header.patient_id,
        "modality": header.modality,
        "transfer_syntax": header.transfer_syntax,
        "path": stored.path,
        "sha256": stored.sha256,
        "size": stored.size,
        "calling_ae": entry.calling_ae if entry else "",
        "peer_address": entry.address if entry else "",
        "association_id": entry.association_id if entry else "",
        "received_at": now,
        "routed_at": None,
    }


@functools.cache
def _series_upsert(dialect_name: str, reopen: bool) -> Any:
    """INSERT ... ON CONFLICT: a new series, or more instances in a known one (new data restarts its quiet);
    built once per dialect and kind."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(_SERIES)
    changes: dict[str, Any] = {
        "instance_count": _SERIES.c.instance_count + statement.excluded.instance_count,
        "last_received_at": statement.excluded.last_received_at,
        "released_at": None,
    }
    if reopen:
        changes["completed_at"] = None
        changes["completed_by"] = case((_SERIES.c.completed_at.is_(None), _SERIES.c.completed_by), else_="")
    return statement.on_conflict_do_update(index_elements=[_SERIES.c.series_uid], set_=changes)


def is_nm_object(sop_class_uid: str, modality: str) -> bool:
    return sop_class_uid in (NM_IMAGE_STORAGE, NM_IMAGE_STORAGE_RETIRED) or modality == "NM"
