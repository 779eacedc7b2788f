"""Tests of `scintnode deliveries`: a real configuration file and SQLite index in tmp_path.

The rows are written as the send stage leaves them (pending, sent, dead); synthetic UIDs throughout."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from scintnode.db import Database, Delivery, Event, Job, Output
from scintnode.send_cli import main

STUDY = "1.2.826.0.1.3680043.8.498.7"  # synthetic study
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Index:
    config: Path
    db: Database
    ids: dict[str, int]  # state -> delivery id

    def state(self, delivery_id: int) -> tuple[str, int]:
        with self.db.session() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            return delivery.state, delivery.attempts


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    config = tmp_path / "node.yaml"
    config.write_text("storage:\n  root: var\n", encoding="utf-8")
    (tmp_path / "var").mkdir()
    db = Database(f"sqlite:///{tmp_path / 'var' / 'index.db'}")
    db.create_schema()
    ids = {}
    with db.session() as session:
        job = Job(
            idempotency_key="synthetic-1",
            rule_name="synthetic",
            ruleset_version="v0",
            network="thyroid",
            outputs=["sr"],
            destinations=["pacs"],
            inputs=[],
            study_uid=STUDY,
        )
        session.add(job)
        session.flush()
        for n, (state, status, error) in enumerate(
            [
                ("pending", "connection-refused", "pacs refused the connection"),
                ("sent", "0x0000", ""),
                ("dead", "0xA900", "Failure: Data Set Does Not Match SOP Class"),
            ],
            start=1,
        ):
            uid = f"1.2.826.0.1.3680043.8.498.7.{n}"
            session.add(
                Output(
                    sop_instance_uid=uid,
                    job_id=job.id,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                    kind="sc",
                    study_uid=STUDY,
                    path=f"outputs/{n}.dcm",
                )
            )
            session.flush()
            delivery = Delivery(
                sop_instance_uid=uid,
                destination="pacs",
                state=state,
                attempts=n,
                last_status=status,
                last_error=error,
                next_attempt_at=dt.datetime(2030, 1, 2, 3, 4, 5),
            )
            session.add(delivery)
            session.flush()
            ids[state] = delivery.id
    yield Index(config, db, ids)
    db.dispose()


def test_list_shows_every_delivery(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(index.config), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "DESTINATION", "STATE", "ATTEMPTS"]
    assert len(lines) == 4
    pending = next(line for line in lines if " pending " in line)
    assert "connection-refused" in pending and "2030-01-02 03:04:05" in pending
    assert "1.2.826.0.1.3680043.8.498.7.1" in pending and STUDY in pending
    sent = next(line for line in lines if " sent " in line)
    assert "2030-01-02" not in sent  # a next attempt means nothing once sent


def test_list_filters_by_state_and_shows_errors(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(index.config), "list", "--state", "dead", "--errors"]) == 0
    out = capsys.readouterr().out
    assert "0xA900" in out and "Data Set Does Not Match SOP Class" in out
    assert "pending" not in out and " sent " not in out
    assert main(["--config", str(index.config), "list", "--state", "dead"]) == 0
    assert "Does Not Match" not in capsys.readouterr().out


def test_resubmit_by_id(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    dead = index.ids["dead"]
    assert main(["--config", str(index.config), "resubmit", str(dead)]) == 0
    assert "resubmitted 1" in capsys.readouterr().out
    assert index.state(dead) == ("pending", 0)
    with index.db.session() as session:
        [event] = session.scalars(select(Event).where(Event.kind == "resubmitted"))
        assert event.study_uid == STUDY and event.detail["previous_status"] == "0xA900"


def test_resubmit_refuses_what_is_not_dead(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [str(index.ids["sent"]), str(index.ids["pending"]), "999"]
    assert main(["--config", str(index.config), "resubmit", *ids]) == 1
    assert "3 id(s) were not dead letters" in capsys.readouterr().err
    assert index.state(index.ids["sent"]) == ("sent", 2)  # an acknowledged delivery is never re-sent


def test_resubmit_all_dead(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(index.config), "resubmit", "--all-dead"]) == 0
    assert index.state(index.ids["dead"]) == ("pending", 0)
    assert main(["--config", str(index.config), "resubmit", "--all-dead"]) == 0
    assert "resubmitted 0" in capsys.readouterr().out.splitlines()[-1]


def test_resubmit_needs_ids_or_all_dead(index: Index) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(index.config), "resubmit"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["--config", str(index.config), "resubmit", "1", "--all-dead"])


def test_missing_index_and_bad_config_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("storage:\n  root: nowhere\n", encoding="utf-8")
    assert main(["--config", str(config), "list"]) == 2
    assert "no node index at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # looking did not create an empty index
    config.write_text("dispatch:\n  base_delay_seconds: -1\n", encoding="utf-8")
    assert main(["--config", str(config), "list"]) == 2
    assert "base_delay_seconds" in capsys.readouterr().err


def test_list_works_while_the_node_holds_a_write_transaction(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    writer = sqlite3.connect(index.db.url.removeprefix("sqlite:///"))
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE deliveries SET attempts = attempts + 1")
        assert main(["--config", str(index.config), "list"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 4
    finally:
        writer.rollback()
        writer.close()


def test_scintnode_command_reaches_it(index: Index) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "scintnode",
            "deliveries",
            "--config",
            str(index.config),
            "list",
            "--state",
            "pending",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "connection-refused" in run.stdout
