"""Assemble: decides when received instances form a complete input, in three layers.

(1) an NM object is complete when it arrives; (2) otherwise the sender released its association and a
short quiet period passed; (3) a long quiet period is the fallback for senders that never release."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast

from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, func, not_, or_, select, update
from sqlalchemy.orm import Session

from scintnode.config import CompletionSettings
from scintnode.db import Instance, Series, in_list_chunks
from scintnode.receive_index import NM_IMAGE_STORAGE, NM_IMAGE_STORAGE_RETIRED

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


def _is_nm_object() -> ColumnElement[bool]:
    """is_nm_object as SQL, so the index picks NM objects out without loading every pending row."""
    return or_(Instance.sop_class_uid.in_((NM_IMAGE_STORAGE, NM_IMAGE_STORAGE_RETIRED)), Instance.modality == "NM")


_UNROUTED = Instance.routed_at.is_(None)
# built once, so each routing pass reuses their compiled form
_NM_READY = (
    select(Instance.study_uid, Instance.series_uid, Instance.sop_instance_uid)
    .where(_UNROUTED, _is_nm_object())
    .order_by(Instance.received_at)
)
_SERIES_TABLE = cast(Table, Series.__table__)
_COMPLETE_NM_SERIES = (
    update(_SERIES_TABLE)
    .where(
        _SERIES_TABLE.c.series_uid.in_(bindparam("series_uids", expanding=True)), _SERIES_TABLE.c.completed_at.is_(None)
    )
    .values(completed_at=bindparam("now"), completed_by=NM_OBJECT)
)


def _series_statements(nm_apart: bool) -> tuple[Select[str], Select[str]]:
    """Open series with unrouted instances (oldest first), and the unrouted instances of one series."""
    waiting = and_(_UNROUTED, not_(_is_nm_object())) if nm_apart else _UNROUTED
    open_series = (
        select(Instance.series_uid)
        .where(waiting)
        .group_by(Instance.series_uid)
        .order_by(func.min(Instance.received_at))
    )
    members = (
        select(Instance.sop_instance_uid)
        .where(waiting, Instance.series_uid == bindparam("series_uid"))
        .order_by(Instance.received_at)
    )
    return open_series, members


_SERIES_STATEMENTS = {nm_apart: _series_statements(nm_apart) for nm_apart in (True, False)}


def collect_ready(session: Session, now: dt.datetime, settings: CompletionSettings) -> list[ReadyUnit]:
    """Units complete at `now` whose instances have not been routed yet; marks their series complete.

    Reads columns, not ORM objects, and loads the instances of a series only once it is complete: a
    series still arriving costs one grouped row per pass, not one row per instance."""
    units: list[ReadyUnit] = []
    nm_apart = settings.nm_object_complete_on_arrival
    if nm_apart:
        nm_rows = session.execute(_NM_READY).all()
        units.extend(ReadyUnit(row[0], row[1], (row[2],), NM_OBJECT) for row in nm_rows)
        for chunk in in_list_chunks(sorted({row[1] for row in nm_rows})):
            session.connection().execute(_COMPLETE_NM_SERIES, {"series_uids": chunk, "now": now})
    open_series, members = _SERIES_STATEMENTS[nm_apart]
    for series_uid in session.scalars(open_series).all():
        series = session.get(Series, series_uid)
        if series is None:
            continue
        layer = series.completed_by if series.completed_at is not None else None
        if layer is None:
            layer = series_completion_layer(series.last_received_at, series.released_at, now, settings)
            if layer is None:
                continue
            series.completed_at, series.completed_by = now, layer
        uids = session.scalars(members, {"series_uid": series_uid}).all()
        units.append(ReadyUnit(series.study_uid, series_uid, tuple(uids), layer))
    return units
