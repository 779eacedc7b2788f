"""The receiver's sqlite3 index writes store exactly what its SQLAlchemy Core writes store.

The same batches (new NM and CT instances, an identical re-send, a re-send with new content, late data
for a completed series, a released association) go through each path into its own SQLite index, at a
fixed clock; every row of every table must then be equal, byte for byte as stored."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from scintnode import receive_index, receive_index_sqlite
from scintnode.db import Database, Event, Instance, Series
from scintnode.receive_index import AssociationLog, Header, ReleaseWrite, StoreWrite, write_index_batch
from scintnode.spool import StoredFile

NOW = dt.datetime(2026, 11, 24, 9, 30, 5)  # no microseconds: the text form must still carry ".000000"
NM_CLASS = "1.2.840.10008.5.1.4.1.1.20"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SENDER = AssociationLog("assoc-1", "GAMMACAM", "10.0.0.7")


def _store(uid: str, series: str, sop_class: str, modality: str, sha256: str) -> StoreWrite:
    header = Header(sop_class, uid, "1.2.3", series, "PAT-1", modality, "1.2.840.10008.1.2.1")
    return StoreWrite(header, StoredFile(f"in/1.2.3/{series}/{uid}-{sha256[:4]}.dcm", sha256, 1024), SENDER)


def _batches() -> list[list[StoreWrite | ReleaseWrite]]:
    return [
        [
            _store("1.2.3.1", "1.2.3.10", NM_CLASS, "NM", "a" * 64),
            _store("1.2.3.2", "1.2.3.20", CT_CLASS, "CT", "b" * 64),
            _store("1.2.3.3", "1.2.3.20", CT_CLASS, "CT", "c" * 64),
        ],
        [
            _store("1.2.3.1", "1.2.3.10", NM_CLASS, "NM", "a" * 64),  # identical: a duplicate
            _store("1.2.3.2", "1.2.3.20", CT_CLASS, "CT", "d" * 64),  # new content: replaces
            ReleaseWrite(frozenset({"1.2.3.20"})),
            _store("1.2.3.4", "1.2.3.30", CT_CLASS, "CT", "e" * 64),
        ],
        [_store("1.2.3.5", "1.2.3.30", CT_CLASS, "CT", "f" * 64), ReleaseWrite(frozenset({"1.2.3.30"}))],
        [_store("1.2.3.6", "1.2.3.20", CT_CLASS, "CT", "0" * 64)],  # new data after the release
    ]


def _index(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, core_only: bool) -> tuple[Any, list[bool]]:
    if core_only:
        monkeypatch.setattr(receive_index, "sqlite_driver", lambda connection: None)
    monkeypatch.setattr(receive_index, "utcnow", lambda: NOW)
    db = Database(f"sqlite:///{tmp_path / name}.db")
    db.create_schema()
    duplicates: list[bool] = []
    for number, batch in enumerate(_batches()):
        with db.engine.begin() as connection:
            write_index_batch(connection, batch)
        duplicates += [item.duplicate for item in batch if isinstance(item, StoreWrite)]
        if number == 0:  # the CT series completes before its late data and re-send arrive
            with db.engine.begin() as connection:
                connection.execute(
                    update(Series).where(Series.series_uid == "1.2.3.20").values(completed_at=NOW, completed_by="x")
                )
    with db.engine.connect() as connection:
        tables = {
            table: connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("instances", "series", "events")
        }
        received_at = connection.scalars(select(Instance.received_at)).all()
        assert received_at == [NOW] * 6  # the text reads back as the moment
        kinds = connection.scalars(select(Event.kind).order_by(Event.id)).all()
        assert kinds == ["received"] * 3 + ["replaced"] + ["received"] * 4
        replaced = connection.scalar(select(Event.detail).where(Event.kind == "replaced"))
        assert replaced["old_path"] == "in/1.2.3/1.2.3.20/1.2.3.2-bbbb.dcm"  # the first file, kept
    db.dispose()
    monkeypatch.undo()
    return tables, duplicates


def test_sqlite3_writes_store_what_the_core_writes_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_write_rows = receive_index_sqlite.write_rows

    def counting_write_rows(*args: Any) -> None:
        calls.append(1)
        real_write_rows(*args)

    core, core_duplicates = _index(tmp_path, "core", monkeypatch, core_only=True)
    assert not calls
    monkeypatch.setattr(receive_index_sqlite, "write_rows", counting_write_rows)
    fast, fast_duplicates = _index(tmp_path, "fast", monkeypatch, core_only=False)
    assert calls, "a SQLite index must take the sqlite3 path"
    assert fast_duplicates == core_duplicates == [False, False, False, True, False, False, False, False]
    for table in ("instances", "series", "events"):
        assert fast[table] == core[table], table
    series = {row[0]: row for row in core["series"]}
    # the re-send reopened the completed CT series; data after its release cleared the release again
    assert series["1.2.3.20"][3] == 4 and series["1.2.3.20"][6] is None and series["1.2.3.20"][7] is None
    assert series["1.2.3.30"][3] == 2 and series["1.2.3.30"][6] == "2026-11-24 09:30:05.000000"
    assert core["instances"][1][8] == "d" * 64
