"""Assemble: decides when received instances form a complete input, in three layers.

(1) an NM object is complete when it arrives; (2) otherwise the sender released its association and a
short quiet period passed; (3) a long quiet period is the fallback for senders that never release."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from scintnode.config import CompletionSettings
from scintnode.db import Instance, Series
from scintnode.receive import is_nm_object

NM_OBJECT = "nm-object"
RELEASE_QUIET = "release-quiet"
LONG_QUIET = "long-quiet"


@dataclass(frozen=True)
class ReadyUnit:
    """Instances that are complete together and are routed as one input set."""

    study_uid: str
    series_uid: str
    instance_uids: tuple[str, ...]
    layer: str  # which completion layer decided it


def series_completion_layer(
    last_received_at: dt.datetime, released_at: dt.datetime | None, now: dt.datetime, settings: CompletionSettings
) -> str | None:
    """Which layer, if any, declares a series complete at `now`."""
    quiet = (now - last_received_at).total_seconds()
    if released_at is not None and released_at >= last_received_at and quiet >= settings.release_quiet_seconds:
        return RELEASE_QUIET
    if quiet >= settings.long_quiet_seconds:
        return LONG_QUIET
    return None


def next_deadline(session: Session, settings: CompletionSettings) -> dt.datetime | None:
    """The earliest moment an open series could complete, so the scheduler wakes no later."""
    earliest: dt.datetime | None = None
    for series in session.scalars(select(Series).where(Series.completed_at.is_(None))):
        quiet = settings.release_quiet_seconds if series.released_at else settings.long_quiet_seconds
        due = series.last_received_at + dt.timedelta(seconds=quiet)
        earliest = due if earliest is None or due < earliest else earliest
    return earliest


def collect_ready(session: Session, now: dt.datetime, settings: CompletionSettings) -> list[ReadyUnit]:
    """Units complete at `now` whose instances have not been routed yet; marks their series complete."""
    units: list[ReadyUnit] = []
    pending = session.scalars(select(Instance).where(Instance.routed_at.is_(None)).order_by(Instance.received_at)).all()
    by_series: dict[str, list[Instance]] = {}
    for instance in pending:
        if settings.nm_object_complete_on_arrival and is_nm_object(instance.sop_class_uid, instance.modality):
            units.append(ReadyUnit(instance.study_uid, instance.series_uid, (instance.sop_instance_uid,), NM_OBJECT))
            series = session.get(Series, instance.series_uid)
            if series is not None and series.completed_at is None:
                series.completed_at, series.completed_by = now, NM_OBJECT
        else:
            by_series.setdefault(instance.series_uid, []).append(instance)
    for series_uid, instances in by_series.items():
        series = session.get(Series, series_uid)
        if series is None:
            continue
        layer = series.completed_by if series.completed_at is not None else None
        if layer is None:
            layer = series_completion_layer(series.last_received_at, series.released_at, now, settings)
            if layer is None:
                continue
            series.completed_at, series.completed_by = now, layer
        units.append(ReadyUnit(series.study_uid, series_uid, tuple(i.sop_instance_uid for i in instances), layer))
    return units
