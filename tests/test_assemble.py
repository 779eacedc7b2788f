"""Completion layers: NM on arrival, release plus a short quiet period, a long quiet period as fallback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from scintnode.assemble import LONG_QUIET, NM_OBJECT, RELEASE_QUIET, collect_ready, series_completion_layer
from scintnode.config import CompletionSettings
from scintnode.db import Database, Instance, Series

T0 = dt.datetime(2026, 3, 2, 9, 0, 0)
SETTINGS = CompletionSettings(release_quiet_seconds=2, long_quiet_seconds=60)


@pytest.mark.parametrize(
    ("released_after", "now_after", "expected"),
    [
        (None, 1, None),  # still receiving
        (None, 59, None),  # no release: only the long quiet period completes it
        (None, 60, LONG_QUIET),
        (0.5, 1, None),  # released, but the short quiet period has not passed
        (0.5, 2, RELEASE_QUIET),
        (-5, 10, None),  # released before the last instance arrived (another association): not this layer
    ],
)
def test_series_completion_layer(released_after: float | None, now_after: float, expected: str | None) -> None:
    released = None if released_after is None else T0 + dt.timedelta(seconds=released_after)
    assert series_completion_layer(T0, released, T0 + dt.timedelta(seconds=now_after), SETTINGS) == expected


def _add(db: Database, uid: str, series: str, modality: str, sop_class: str, released: bool) -> None:
    with db.session() as session:
        session.add(
            Instance(
                sop_instance_uid=uid,
                sop_class_uid=sop_class,
                study_uid="1.2",
                series_uid=series,
                modality=modality,
                path="x",
                sha256="0",
                size=1,
                received_at=T0,
            )
        )
        if session.get(Series, series) is None:
            session.add(
                Series(
                    series_uid=series,
                    study_uid="1.2",
                    modality=modality,
                    instance_count=0,
                    first_received_at=T0,
                    last_received_at=T0,
                    released_at=T0 if released else None,
                )
            )


def test_collect_ready_applies_each_layer_once(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'i.db'}")
    db.create_schema()
    ct = "1.2.840.10008.5.1.4.1.1.2"
    _add(db, "1.1", "9.1", "NM", "1.2.840.10008.5.1.4.1.1.20", released=False)
    _add(db, "2.1", "9.2", "CT", ct, released=True)
    _add(db, "2.2", "9.2", "CT", ct, released=True)
    _add(db, "3.1", "9.3", "CT", ct, released=False)
    with db.session() as session:
        units = collect_ready(session, T0 + dt.timedelta(seconds=1), SETTINGS)
        assert [(u.series_uid, u.layer, u.instance_uids) for u in units] == [("9.1", NM_OBJECT, ("1.1",))]
        for uid in ("1.1",):
            session.get(Instance, uid).routed_at = T0  # type: ignore[union-attr]
    with db.session() as session:
        units = collect_ready(session, T0 + dt.timedelta(seconds=3), SETTINGS)
        assert [(u.series_uid, u.layer, sorted(u.instance_uids)) for u in units] == [
            ("9.2", RELEASE_QUIET, ["2.1", "2.2"])
        ]
        for uid in ("2.1", "2.2"):
            session.get(Instance, uid).routed_at = T0  # type: ignore[union-attr]
    with db.session() as session:
        units = collect_ready(session, T0 + dt.timedelta(seconds=61), SETTINGS)
        assert [(u.series_uid, u.layer) for u in units] == [("9.3", LONG_QUIET)]
        assert session.get(Series, "9.3").completed_by == LONG_QUIET  # type: ignore[union-attr]
    db.dispose()
