"""Retention: which spooled files a pass removes and which it keeps, its rows marked "purged", and a pass in
short transactions of its own, found through the partial indexes of files not purged yet (also on an index
made by an earlier release)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, update

from scintnode.db import Database, Delivery, Episode, EpisodeMember, Event, Instance, Job, Output
from scintnode.receive_index import remove_unindexed_inputs
from scintnode.retention import PURGED, purge_expired
from scintnode.spool import Spool

NOW = dt.datetime(2026, 12, 7, 12, 0)
OLD = NOW - dt.timedelta(days=40)
YOUNG = NOW - dt.timedelta(days=3)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Database, Spool]]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    spool = Spool(tmp_path / "spool")
    yield db, spool
    spool.close()
    db.dispose()


def _input(db: Database, spool: Spool, uid: str, received: dt.datetime, routed: bool = True) -> str:
    stored = spool.store_input(f"instance {uid}".encode())
    with db.session() as session:
        session.add(
            Instance(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
                study_uid="1.2.3",
                series_uid="1.2.3.4",
                path=stored.path,
                sha256=stored.sha256,
                size=stored.size,
                received_at=received,
                routed_at=received if routed else None,
            )
        )
    return stored.path


def _output(db: Database, spool: Spool, uid: str, created: dt.datetime, delivery: str, job_id: int) -> str:
    stored = spool.store_output(f"result {uid}".encode(), "1.2.3", uid)
    with db.session() as session:
        session.add(
            Output(
                sop_instance_uid=uid,
                job_id=job_id,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                kind="sr",
                study_uid="1.2.3",
                path=stored.path,
                created_at=created,
            )
        )
        session.flush()  # the delivery's foreign key needs the output row first
        session.add(Delivery(sop_instance_uid=uid, destination="pacs", state=delivery))
    return stored.path


def _job(db: Database, state: str, inputs: list[str]) -> int:
    with db.session() as session:
        job = Job(
            idempotency_key=f"{state}-{'-'.join(inputs)}",
            rule_name="r",
            ruleset_version="v",
            network="thyroid-resnet34",
            outputs=["sr"],
            destinations=["pacs"],
            inputs=inputs,
            study_uid="1.2.3",
            state=state,
        )
        session.add(job)
        session.flush()
        return job.id


def _paths(db: Database) -> dict[str, str]:
    with db.session() as session:
        rows = [*session.execute(select(Instance.sop_instance_uid, Instance.path))]
        rows += session.execute(select(Output.sop_instance_uid, Output.path))
    return {uid: path for uid, path in rows}


def test_expired_inputs_go_unless_young_unrouted_or_read_by_a_job(node: tuple[Database, Spool]) -> None:
    db, spool = node
    files = {
        "old": _input(db, spool, "1.1", OLD),
        "young": _input(db, spool, "1.2", YOUNG),
        "unrouted": _input(db, spool, "1.3", OLD, routed=False),
        "pending": _input(db, spool, "1.4", OLD),
        "running": _input(db, spool, "1.5", OLD),
        "done": _input(db, spool, "1.6", OLD),
    }
    _job(db, "pending", ["1.4"])
    _job(db, "running", ["1.9", "1.5"])
    _job(db, "done", ["1.6"])

    assert purge_expired(db, spool, 30, now=NOW) == 2

    paths = _paths(db)
    assert paths["1.1"] == PURGED and paths["1.6"] == PURGED
    assert not spool.absolute(files["old"]).exists() and not spool.absolute(files["done"]).exists()
    for name, uid in (("young", "1.2"), ("unrouted", "1.3"), ("pending", "1.4"), ("running", "1.5")):
        assert paths[uid] == files[name]
        assert spool.absolute(files[name]).read_bytes() == f"instance {uid}".encode()
    assert purge_expired(db, spool, 30, now=NOW) == 0


def test_expired_inputs_an_open_episode_holds_stay_until_it_closes(node: tuple[Database, Spool]) -> None:
    db, spool = node
    files = {uid: _input(db, spool, uid, OLD) for uid in ("2.1", "2.2", "2.3")}
    waiting = _episode(db, "open", ["2.1"])
    _episode(db, "ran", ["2.2"])
    _episode(db, "gave-up", ["2.3"])

    assert purge_expired(db, spool, 30, now=NOW) == 2
    assert _paths(db)["2.1"] == files["2.1"] and spool.absolute(files["2.1"]).exists()

    with db.session() as session:
        session.execute(update(Episode).where(Episode.id == waiting).values(state="gave-up"))
    assert purge_expired(db, spool, 30, now=NOW) == 1
    assert _paths(db)["2.1"] == PURGED and not spool.absolute(files["2.1"]).exists()


def test_a_replaced_first_file_goes_unless_an_instance_names_it(node: tuple[Database, Spool]) -> None:
    """Before input slots a file's name came from its UID and content: content A, then B, then A again put the
    current file under the name the first `replaced` event gives as old. That file stays."""
    db, spool = node
    first = spool.store_input(b"first content").path
    recent = spool.store_input(b"replaced three days ago").path
    current = _input(db, spool, "9.1", OLD, routed=False)
    with db.session() as session:
        for at, old in ((OLD, first), (OLD, current), (YOUNG, recent)):
            db.record_event(session, "1.2.3", "replaced", sop_instance_uid="9.1", old_path=old)
            session.flush()
            session.execute(update(Event).where(Event.id == select(func.max(Event.id)).scalar_subquery()).values(at=at))

    assert purge_expired(db, spool, 30, now=NOW) == 1

    assert not spool.absolute(first).exists()
    assert spool.absolute(recent).exists()
    assert spool.absolute(current).read_bytes() == b"instance 9.1"


def _episode(db: Database, state: str, members: list[str]) -> int:
    with db.session() as session:
        episode = Episode(
            rule_name="parathyroid",
            join_key=f"patient-{state}",
            state=state,
            ruleset_version="v",
            first_acquired_at=OLD,
            deadline_at=OLD + dt.timedelta(hours=6),
        )
        session.add(episode)
        session.flush()
        session.add_all(
            EpisodeMember(
                episode_id=episode.id,
                slot="early",
                unit=uid,
                sop_instance_uid=uid,
                study_uid="1.2.3",
                acquired_at=OLD,
                values={},
            )
            for uid in members
        )
        return episode.id


def test_expired_outputs_go_once_no_delivery_is_pending(node: tuple[Database, Spool]) -> None:
    db, spool = node
    job = _job(db, "done", [])
    sent = _output(db, spool, "2.1", OLD, "sent", job)
    dead = _output(db, spool, "2.2", OLD, "dead", job)
    pending = _output(db, spool, "2.3", OLD, "pending", job)
    young = _output(db, spool, "2.4", YOUNG, "sent", job)

    assert purge_expired(db, spool, 30, now=NOW) == 2

    paths = _paths(db)
    assert paths["2.1"] == PURGED and paths["2.2"] == PURGED
    assert not spool.absolute(sent).exists() and not spool.absolute(dead).exists()
    assert paths["2.3"] == pending and spool.absolute(pending).exists()
    assert paths["2.4"] == young and spool.absolute(young).exists()


def test_a_pass_never_keeps_the_index_locked_while_it_removes_files(
    node: tuple[Database, Spool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file removal, of inputs and outputs, happens with no write transaction open: a writer that will
    not wait (as the receiver's commit must not wait for minutes) commits at each one, batches of 3."""
    db, spool = node
    job = _job(db, "done", [])
    for number in range(7):
        _input(db, spool, f"3.{number}", OLD + dt.timedelta(minutes=number))
        _output(db, spool, f"4.{number}", OLD + dt.timedelta(minutes=number), "sent", job)
    impatient = sqlite3.connect(tmp_path / "index.db", timeout=0, isolation_level=None)
    commits: list[str] = []
    real_remove = spool.remove

    def remove(relative: str) -> None:
        impatient.execute("BEGIN IMMEDIATE")
        impatient.execute(
            "INSERT INTO events (study_uid, at, kind, detail) VALUES ('1.2.3', '2026-12-07 12:00:00.000000', "
            "'received', '{}')"
        )
        impatient.execute("COMMIT")
        commits.append(relative)
        real_remove(relative)

    monkeypatch.setattr(spool, "remove", remove)

    assert purge_expired(db, spool, 30, now=NOW, batch=3) == 14

    assert len(commits) == 14
    assert all(path == PURGED for path in _paths(db).values())


def test_batches_walk_every_expired_row_once(node: tuple[Database, Spool], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows with the same time are neither skipped nor removed twice across batch boundaries."""
    db, spool = node
    for number in range(10):
        _input(db, spool, f"5.{number:02d}", OLD + dt.timedelta(minutes=number // 4))  # ties across batches
    removed: list[str] = []
    real_remove = spool.remove

    def remove(relative: str) -> None:
        removed.append(relative)
        real_remove(relative)

    monkeypatch.setattr(spool, "remove", remove)

    assert purge_expired(db, spool, 30, now=NOW, batch=3) == 10

    assert len(removed) == len(set(removed)) == 10


def test_a_row_whose_file_changed_meanwhile_keeps_its_new_file(
    node: tuple[Database, Spool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input re-sent with other content while the pass removes its old file keeps the new one indexed."""
    db, spool = node
    old = _input(db, spool, "6.1", OLD)
    new = spool.store_input(b"re-sent")
    real_remove = spool.remove

    def remove(relative: str) -> None:
        with db.session() as session:
            session.execute(update(Instance).where(Instance.sop_instance_uid == "6.1").values(path=new.path))
        real_remove(relative)

    monkeypatch.setattr(spool, "remove", remove)

    assert purge_expired(db, spool, 30, now=NOW) == 1

    assert not spool.absolute(old).exists()
    assert _paths(db)["6.1"] == new.path and spool.absolute(new.path).read_bytes() == b"re-sent"


def test_an_index_made_by_an_earlier_release_gets_the_new_indexes(tmp_path: Path) -> None:
    """create_schema adds the partial indexes to existing tables, and the queries of the pass and of the restart
    sweep use them."""
    path = tmp_path / "index.db"
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    raw = sqlite3.connect(path)
    raw.execute("DROP INDEX ix_instances_not_purged")
    raw.execute("DROP INDEX ix_outputs_not_purged")
    raw.execute("DROP INDEX ix_events_replaced")
    raw.commit()

    db.create_schema()

    indexes = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_instances_not_purged", "ix_outputs_not_purged", "ix_events_replaced"} <= indexes
    plans: list[str] = []

    def explain(conn: object, cursor: sqlite3.Cursor, statement: str, parameters: object, *_: object) -> None:
        if statement.startswith("SELECT"):
            plans.extend(str(row) for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters))  # type: ignore[arg-type]

    event.listen(db.engine, "before_cursor_execute", explain)
    spool = Spool(tmp_path / "spool")
    _input(db, spool, "7.1", OLD)
    purge_expired(db, spool, 30, now=NOW, batch=1)
    assert any("ix_instances_not_purged" in plan for plan in plans)
    assert any("ix_outputs_not_purged" in plan for plan in plans)
    assert any("ix_events_replaced" in plan for plan in plans)
    # the restart sweep reads the changed re-sends through it too, when it finds a file no row names
    plans.clear()
    spool.store_input(b"written, never indexed")
    spool.close()
    restarted = Spool(tmp_path / "spool")
    assert remove_unindexed_inputs(db, restarted) == 1
    restarted.close()
    assert any("ix_events_replaced" in plan for plan in plans)
