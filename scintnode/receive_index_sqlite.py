"""The receiver's index writes on SQLite, through the sqlite3 connection itself.

Under four parallel associations the group commit's SQL through SQLAlchemy took about 1 ms a batch, most
of it Python the receiving threads wait for under the GIL; these few prepared statements take a third
less and raise NM ingest over 4 associations by about a tenth (benchmarks/RESULTS.md). They store what
the SQLAlchemy Core path in `receive_index` stores, in the same encoding (text timestamps, JSON text):
`tests/test_receive_index_sqlite.py` writes the same batches both ways and compares the tables."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's DateTime on SQLite: always with microseconds

_INSTANCE_COLUMNS = (
    "sop_instance_uid, sop_class_uid, study_uid, series_uid, patient_id, modality, transfer_syntax, path,"
    " sha256, size, calling_ae, peer_address, association_id, received_at, routed_at"
)
INSERT_INSTANCES = (
    f"INSERT INTO instances ({_INSTANCE_COLUMNS}) VALUES ("
    + ", ".join(f":{name.strip()}" for name in _INSTANCE_COLUMNS.split(","))
    + ")"
)
REPLACE_INSTANCE = (
    "UPDATE instances SET path = :path, sha256 = :sha256, size = :size, received_at = :now, routed_at = NULL"
    " WHERE sop_instance_uid = :uid"
)
# new data restarts a series' quiet; late data for a completed series reopens it (the `reopen` form)
_UPSERT_SERIES = (
    "INSERT INTO series (series_uid, study_uid, modality, instance_count, first_received_at, last_received_at,"
    " released_at, completed_at, completed_by)"
    " VALUES (:series_uid, :study_uid, :modality, :instance_count, :first_received_at, :last_received_at,"
    " NULL, NULL, '')"
    " ON CONFLICT (series_uid) DO UPDATE SET instance_count = series.instance_count + excluded.instance_count,"
    " last_received_at = excluded.last_received_at, released_at = NULL"
)
UPSERT_SERIES = {
    False: _UPSERT_SERIES,
    True: _UPSERT_SERIES + ", completed_at = NULL,"
    " completed_by = CASE WHEN series.completed_at IS NULL THEN series.completed_by ELSE '' END",
}
INSERT_EVENTS = "INSERT INTO events (study_uid, at, kind, detail) VALUES (:study_uid, :at, :kind, :detail)"


def timestamp(moment: dt.datetime) -> str:
    return moment.strftime(_TIMESTAMP)


def known_files(connection: sqlite3.Connection, uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The stored content hash and file of each of these instances that the index already holds."""
    placeholders = ", ".join("?" * len(uids))
    cursor = connection.execute(
        f"SELECT sop_instance_uid, sha256, path FROM instances WHERE sop_instance_uid IN ({placeholders})", uids
    )
    return {uid: (sha256, path) for uid, sha256, path in cursor}


def write_rows(
    connection: sqlite3.Connection,
    new_instances: list[dict[str, Any]],
    replaced: list[dict[str, Any]],
    series: dict[bool, list[dict[str, Any]]],
    events: Iterable[dict[str, Any]],
) -> None:
    """Write rows planned by `receive_index`; their timestamps are already text (`timestamp`)."""
    if new_instances:
        connection.executemany(INSERT_INSTANCES, new_instances)
    if replaced:
        connection.executemany(REPLACE_INSTANCE, replaced)
    for reopen, rows in series.items():
        if rows:
            connection.executemany(UPSERT_SERIES[reopen], rows)
    connection.executemany(INSERT_EVENTS, ({**event, "detail": json.dumps(event["detail"])} for event in events))
