"""Retention: deletes spooled files the node no longer needs, once they are older than the retention period.

Inputs go once every job on them has finished; outputs once every delivery of them has ended (sent or
dead-lettered and left there). Index rows stay (they are small and make the audit trail)."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from scintnode.db import Database, Delivery, Instance, Job, Output, utcnow
from scintnode.spool import Spool

log = logging.getLogger(__name__)

PURGED = "purged"  # path value of an index row whose file retention removed


def purge_expired(db: Database, spool: Spool, retention_days: float, now: dt.datetime | None = None) -> int:
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    removed = 0
    with db.session() as session:
        busy_inputs: set[str] = set()
        for inputs in session.scalars(select(Job.inputs).where(Job.state.in_(("pending", "running")))):
            busy_inputs.update(inputs)
        for instance in session.scalars(
            select(Instance).where(
                Instance.received_at < cutoff, Instance.routed_at.is_not(None), Instance.path != PURGED
            )
        ):
            if instance.sop_instance_uid in busy_inputs:
                continue
            spool.remove(instance.path)
            instance.path = PURGED
            removed += 1
        for output in session.scalars(select(Output).where(Output.created_at < cutoff, Output.path != PURGED)):
            open_deliveries = session.scalar(
                select(Delivery.id).where(
                    Delivery.sop_instance_uid == output.sop_instance_uid, Delivery.state == "pending"
                )
            )
            if open_deliveries is not None:
                continue
            spool.remove(output.path)
            output.path = PURGED
            removed += 1
    if removed:
        log.info("retention removed %d spooled file(s) older than %.1f days", removed, retention_days)
    return removed
