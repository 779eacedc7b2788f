"""The aged index the benchmarks use: copies of a run's rows that still hang together (each copy's own UIDs,
ids and times, references kept), and the ingest benchmark run beside it on a copy of it."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from benchmarks import aged_index, ingest
from scintnode.db import Database, Delivery, Episode, EpisodeMember, Event, Instance, Job, Output, Series, utcnow

UID = "1.2.826.0.1.3680043.8.498.1234567890"
NM_CLASS = "1.2.840.10008.5.1.4.1.1.20"


def _source(path: Path) -> None:
    """One study's rows, as a node writes them: an instance, its series, episode, job, output, delivery, event."""
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    now = utcnow()
    with db.session() as session:
        session.add(
            Episode(
                id=1,
                rule_name="r",
                join_key="SYNP1|",
                state="open",
                ruleset_version="v",
                first_acquired_at=now,
                deadline_at=now + dt.timedelta(days=1),
            )
        )
        session.add(
            Instance(
                sop_instance_uid=UID + "1",
                sop_class_uid=NM_CLASS,
                study_uid=UID + "2",
                series_uid=UID + "3",
                patient_id="SYNP1",
                transfer_syntax="1.2.840.10008.1.2.1",
                path="inputs/slots/00000000/0000.dcm",
                sha256="0" * 64,
                size=1,
                peer_address="127.0.0.1",
                received_at=now,
                routed_at=now,
            )
        )
        session.add(Series(series_uid=UID + "3", study_uid=UID + "2", modality="NM", instance_count=1))
        session.flush()
        session.add(
            Job(
                id=1,
                idempotency_key="k",
                rule_name="r",
                ruleset_version="v",
                network="paranet-small",
                outputs=["sr"],
                destinations=["pacs"],
                inputs=[UID + "1"],
                episode_id=1,
                study_uid=UID + "2",
                state="done",
            )
        )
        session.flush()
        session.add(
            EpisodeMember(
                episode_id=1,
                slot="early",
                unit=UID + "3",
                sop_instance_uid=UID + "1",
                study_uid=UID + "2",
                acquired_at=now,
                values={},
            )
        )
        session.add(
            Output(
                sop_instance_uid=UID + "4",
                job_id=1,
                sop_class_uid=NM_CLASS,
                kind="sr",
                study_uid=UID + "2",
                path="outputs/a/b.dcm",
            )
        )
        session.flush()
        session.add(Delivery(sop_instance_uid=UID + "4", destination="pacs", state="sent"))
        session.add(Event(study_uid=UID + "2", kind="inferred", detail={"job": 1, "sop_instance_uid": UID + "1"}))
    db.dispose()


def test_copies_keep_their_references_and_spread_over_the_days(tmp_path: Path) -> None:
    _source(tmp_path / "source.db")

    counts = aged_index.build(tmp_path / "source.db", tmp_path / "aged.db", instances=10, days=90)

    assert set(counts.values()) == {10}  # the source's rows and nine copies, in every table
    index = sqlite3.connect(tmp_path / "aged.db")
    instances = {
        row[0]: row[1:]
        for row in index.execute("SELECT sop_instance_uid, sop_class_uid, patient_id, path FROM instances")
    }
    assert {row[0] for row in instances.values()} == {NM_CLASS}
    assert len({row[1] for row in instances.values()}) == 10 and len({row[2] for row in instances.values()}) == 10
    jobs = dict(index.execute("SELECT id, inputs FROM jobs"))
    for inputs in jobs.values():
        assert set(json.loads(inputs)) <= set(instances)
    for (detail,) in index.execute("SELECT detail FROM events"):  # each copy's event names its own job
        event = json.loads(detail)
        assert event["sop_instance_uid"] in json.loads(jobs[event["job"]])
    assert (
        index.execute(
            "SELECT count(*) FROM outputs JOIN jobs ON jobs.id = job_id AND jobs.study_uid = outputs.study_uid"
        ).fetchone()[0]
        == 10
    )
    assert index.execute("SELECT count(*) FROM deliveries JOIN outputs USING (sop_instance_uid)").fetchone()[0] == 10
    assert (
        index.execute("SELECT count(*) FROM episode_members JOIN episodes ON episodes.id = episode_id").fetchone()[0]
        == 10
    )
    oldest, newest = index.execute("SELECT min(received_at), max(received_at) FROM instances").fetchone()
    span = dt.datetime.fromisoformat(newest) - dt.datetime.fromisoformat(oldest)
    assert dt.timedelta(days=89) < span <= dt.timedelta(days=90)
    # an episode open past its deadline in a copy was given up, as the node's deadline pass would have
    states = dict(index.execute("SELECT state, count(*) FROM episodes GROUP BY state"))
    assert states == {"open": 1, "gave-up": 9}


@pytest.mark.e2e
def test_the_ingest_benchmark_runs_beside_an_aged_index_on_one_copy_the_rounds_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _source(tmp_path / "source.db")
    aged_index.build(tmp_path / "source.db", tmp_path / "aged.db", instances=50, days=90)
    before = (tmp_path / "aged.db").read_bytes()
    indexed = _count(tmp_path / "aged.db", "SELECT count(*) FROM instances")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    copies: list[Path] = []
    copyfile, rmtree = shutil.copyfile, shutil.rmtree

    def counted_copy(source: Path, target: Path) -> Path:
        if Path(source) == tmp_path / "aged.db":
            copies.append(Path(target))
        return Path(copyfile(source, target))

    # what each aged run leaves in its index, read as the benchmark removes the run's folder
    left: list[tuple[int, bool]] = []

    def removal(path: Path, *args: Any, **kwargs: Any) -> None:
        index = Path(path) / "spool" / "index.db"
        if index.exists() and index.stat().st_nlink == 2:
            wal = index.with_name("index.db-wal")
            left.append((_count(index, "SELECT count(*) FROM instances"), wal.exists() and wal.stat().st_size > 0))
        rmtree(path, *args, **kwargs)

    received: list[int] = []
    take_out = ingest._rows_added_since

    def counted_take_out(index: Path, last_rows: dict[str, int]) -> None:
        received.append(_count(index, "SELECT count(*) FROM instances"))
        take_out(index, last_rows)

    monkeypatch.setattr(ingest, "_rows_added_since", counted_take_out)
    monkeypatch.setattr(shutil, "copyfile", counted_copy)
    monkeypatch.setattr(shutil, "rmtree", removal)
    argv = ["--ct", "0", "--nm", "3", "--wb", "0", "--rounds", "2", "--associations", "1", "--receivers", "scintnode"]

    assert ingest.main([*argv, "--aged-index", str(tmp_path / "aged.db")]) == 0

    out = capsys.readouterr().out
    assert "| scintnode | nm 256x256 | 1 |" in out and "| scintnode, aged index | nm 256x256 | 1 |" in out
    assert "aged index x empty index, nm 256x256 x1: " in out
    assert len(copies) == 1  # one copy before the first run, not one per run
    assert received == [indexed + 3, indexed + 3]  # each aged run indexed the set as new instances
    # both runs worked on that copy, each on the index as it was made: their rows were taken out of it, and
    # nothing of them was left in a WAL, by the time the run's folder went
    assert left == [(indexed, False), (indexed, False)]
    assert (tmp_path / "aged.db").read_bytes() == before  # the node ran on a copy
    assert list(work.iterdir()) == []


def _count(index: Path, query: str) -> int:
    with closing(sqlite3.connect(index)) as connection:
        return int(connection.execute(query).fetchone()[0])
