"""A job that runs past `job_time_limit_seconds` fails, and the node exits (status 75) for its supervisor to
restart it, since a hung thread cannot be stopped; a job that ends in time, or a commit in progress, is left be."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from scintnode.config import Settings
from scintnode.db import Database, Event, Job
from scintnode.job_watchdog import EXIT_HUNG_JOB
from scintnode.models.registry import Network, Registry
from scintnode.node import Node
from tests.test_job_recovery import job_row

LIMIT_SECONDS = 0.5
REPO = Path(__file__).resolve().parents[1]


def hung_job_settings(root: Path) -> Settings:
    return Settings.model_validate(
        {
            "node": {"port": 0, "bind_address": "127.0.0.1"},
            "storage": {"root": str(root)},
            "http": {"enabled": False},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112}},
            "job_time_limit_seconds": LIMIT_SECONDS,
        }
    )


def pending_job(key: str) -> Job:
    # no inputs, so the job goes straight to loading its network, which the tests make hang or fail
    return job_row(key, 0, "pending", inputs=[])


def jobs_by_key(db: Database) -> dict[str, Job]:
    with db.session() as session:
        jobs = {job.idempotency_key: job for job in session.scalars(select(Job))}
        session.expunge_all()
    return jobs


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_job_past_its_limit_fails_and_the_node_exits_for_a_restart(tmp_path: Path) -> None:
    release = threading.Event()

    def hangs_until_released() -> Network:
        release.wait()
        raise RuntimeError("released by the test")

    node = Node(hung_job_settings(tmp_path / "spool"), registry=Registry({"thyroid-resnet34": hangs_until_released}))
    exits: list[int] = []
    node.pipeline.watchdog.exit_process = exits.append
    with node.db.session() as session:
        session.add_all([pending_job("hangs"), pending_job("next")])
    worker = threading.Thread(target=node.pipeline.run_next_job, daemon=True)
    worker.start()
    try:
        wait_until(lambda: jobs_by_key(node.db)["hangs"].state == "running")
        node.pipeline.watchdog.check()
        assert exits == []  # not yet past the limit
        time.sleep(LIMIT_SECONDS + 0.1)
        node.pipeline.watchdog.check()
        assert exits == [EXIT_HUNG_JOB]
        jobs = jobs_by_key(node.db)
        assert jobs["hangs"].state == "failed" and "time limit" in (jobs["hangs"].error or "")
        assert jobs["next"].state == "pending"  # the next start runs it
        with node.db.session() as session:
            kinds = [(e.kind, e.detail.get("job")) for e in session.scalars(select(Event))]
        assert kinds == [("failed", jobs["hangs"].id)]
    finally:
        release.set()
        worker.join(timeout=10)
        node.db.dispose()


def test_a_job_that_ends_in_time_is_left_alone(tmp_path: Path) -> None:
    def fails_at_once() -> Network:
        raise RuntimeError("no such weights")

    node = Node(hung_job_settings(tmp_path / "spool"), registry=Registry({"thyroid-resnet34": fails_at_once}))
    exits: list[int] = []
    node.pipeline.watchdog.exit_process = exits.append
    with node.db.session() as session:
        session.add(pending_job("quick"))
    assert node.pipeline.run_next_job()
    time.sleep(LIMIT_SECONDS + 0.1)
    node.pipeline.watchdog.check()
    assert exits == []
    assert "no such weights" in (jobs_by_key(node.db)["quick"].error or "")
    node.db.dispose()


def test_a_commit_in_progress_finishes_before_the_watchdog_judges(tmp_path: Path) -> None:
    node = Node(hung_job_settings(tmp_path / "spool"))
    watchdog = node.pipeline.watchdog
    exits: list[int] = []
    watchdog.exit_process = exits.append
    with node.db.session() as session:
        session.add(pending_job("committing"))
    job_id = jobs_by_key(node.db)["committing"].id
    checked = threading.Thread(target=watchdog.check)
    with watchdog.running(job_id), watchdog.committing():
        time.sleep(LIMIT_SECONDS + 0.1)  # past the limit, but its outputs are being committed
        checked.start()
        time.sleep(0.2)
        assert checked.is_alive()  # the watchdog waits for the commit
    checked.join(timeout=10)
    assert exits == []  # the job finished during the wait
    assert jobs_by_key(node.db)["committing"].state == "pending"
    node.db.dispose()


def test_the_node_process_exits_with_status_75_and_the_job_is_failed(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.hung_job_node", str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_HUNG_JOB, result.stderr[-2000:]
    assert time.monotonic() - started < 60  # the watchdog, not the helper's own end
    assert "past its time limit" in result.stderr
    db = Database(hung_job_settings(root).database_url)
    job = jobs_by_key(db)["hangs"]
    assert job.state == "failed" and "time limit" in (job.error or "")
    db.dispose()
