"""Retention: deletes spooled files the node no longer needs, once they are older than the retention period.

Inputs go once they are routed, no pending or running job reads them and no open episode holds them (one
left waiting, `keep-waiting`, may wait for its missing input longer than the retention period); outputs once
no delivery of them is pending (sent, or dead-lettered and left there). Index rows stay, their path set to
"purged" (they are small and make the audit trail). The first file of an input re-sent with other content,
kept beside the new one and named by its `replaced` event, goes once that event is older than the period.

A pass works through the expired files in batches. Each batch is read, its files removed, and its rows
marked in a short transaction of its own, so the receiver's commits wait at most for one batch's marks and
memory stays bounded. A pass over a backlog (a lowered `retention_days`, a node that was stopped for weeks) once
held one transaction for minutes and the ORM objects of every expired row. The rows are found through
partial indexes of the files not purged yet (`db.py`), so an hourly pass does not read the purged history."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import cast

from sqlalchemy import Select, Table, bindparam, select, tuple_, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from scintnode.db import (
    REPLACED_FIRST_FILES,
    Database,
    Delivery,
    Episode,
    EpisodeMember,
    Event,
    Instance,
    Job,
    Output,
    in_list_chunks,
    utcnow,
)
from scintnode.spool import Spool

log = logging.getLogger(__name__)

PURGED = "purged"  # path value of an index row whose file retention removed
BATCH = 500  # rows read, removed and marked per transaction


def purge_expired(
    db: Database, spool: Spool, retention_days: float, now: dt.datetime | None = None, batch: int = BATCH
) -> int:
    """Remove the expired inputs and outputs; returns how many files were removed."""
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    inputs = select(Instance.sop_instance_uid, Instance.path, Instance.received_at).where(
        Instance.path != PURGED, Instance.received_at < cutoff, Instance.routed_at.is_not(None)
    )
    outputs = select(Output.sop_instance_uid, Output.path, Output.created_at).where(
        Output.path != PURGED, Output.created_at < cutoff
    )
    removed = _purge(db, spool, inputs, Instance, Instance.received_at, _busy_inputs, batch)
    removed += _purge(db, spool, outputs, Output, Output.created_at, _undelivered, batch)
    removed += _purge_replaced_first_files(db, spool, cutoff)
    if removed:
        log.info("retention removed %d spooled file(s) older than %.1f days", removed, retention_days)
    return removed


def _purge(
    db: Database,
    spool: Spool,
    expired: Select[str, str, dt.datetime],
    table: type[Instance] | type[Output],
    time_column: InstrumentedAttribute[dt.datetime],
    kept: Callable[[Session, list[str]], set[str]],
    batch: int,
) -> int:
    """Walk the expired rows oldest first, a batch at a time, and remove the files of those not `kept`."""
    rows_table = cast(Table, table.__table__)
    # a row whose file changed since it was read (an input re-sent with other content) keeps it
    mark = (
        update(rows_table)
        .where(rows_table.c.sop_instance_uid == bindparam("uid"), rows_table.c.path == bindparam("old"))
        .values(path=PURGED)
    )
    removed = 0
    after: tuple[dt.datetime, str] | None = None
    while True:
        query = expired.order_by(time_column, table.sop_instance_uid).limit(batch)
        if after is not None:
            query = query.where(tuple_(time_column, table.sop_instance_uid) > tuple_(*after))
        with db.session() as session:
            rows = session.execute(query).all()
            keep = kept(session, [uid for uid, _, _ in rows]) if rows else set()
        if not rows:
            return removed
        after = (rows[-1][2], rows[-1][0])
        gone = [(uid, path) for uid, path, _ in rows if uid not in keep]
        for _, path in gone:
            spool.remove(path)
        if gone:
            with db.session() as session:
                session.connection().execute(mark, [{"uid": uid, "old": path} for uid, path in gone])
        removed += len(gone)


def _purge_replaced_first_files(db: Database, spool: Spool, cutoff: dt.datetime) -> int:
    """Remove the first files of inputs re-sent with other content before `cutoff`. Nothing reads them: the
    instance's row names the new file. The events stay, so each pass reads every old one again; they are as few
    as the changed re-sends, found through their partial index. (`instances.path` has no index: it is read only
    when there is a file to remove.)"""
    with db.session() as session:
        paths = set(session.scalars(REPLACED_FIRST_FILES.where(Event.at < cutoff)))
        gone = [path for path in paths if path and path != PURGED and spool.absolute(path).exists()]
        # before input slots a file's name came from its UID and content, so content A, then B, then A again put
        # the current file under the first one's name: a file an instance names stays
        named: set[str] = set()
        for chunk in in_list_chunks(gone):
            named.update(session.scalars(select(Instance.path).where(Instance.path.in_(chunk))))
    gone = [path for path in gone if path not in named]
    for path in gone:
        spool.remove(path)
    return len(gone)


def _busy_inputs(session: Session, uids: list[str]) -> set[str]:
    """Those of `uids` that a pending or running job still reads, or an open episode holds."""
    wanted = set(uids)
    busy: set[str] = set()
    for inputs in session.scalars(select(Job.inputs).where(Job.state.in_(("pending", "running")))):
        busy.update(wanted.intersection(inputs))
    # read from the open episodes, which are few, through their index: members are indexed by episode only
    held = select(EpisodeMember.sop_instance_uid).join(Episode).where(Episode.state == "open")
    busy.update(wanted.intersection(session.scalars(held)))
    return busy


def _undelivered(session: Session, uids: list[str]) -> set[str]:
    """Those of `uids` with a delivery still pending."""
    pending: set[str] = set()
    for chunk in in_list_chunks(uids):
        pending.update(
            session.scalars(
                select(Delivery.sop_instance_uid).where(
                    Delivery.sop_instance_uid.in_(chunk), Delivery.state == "pending"
                )
            )
        )
    return pending
