"""A start after a crash: the jobs the dead node was running run again, except one that was running at each of
the last `max_job_attempts` deaths, which fails so that it cannot hold the node in a crash loop."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from scintnode.config import Settings
from scintnode.db import Event, Job
from scintnode.node import Node


def job_row(key: str, attempts: int, state: str = "running", inputs: list[str] | None = None) -> Job:
    """A thyroid job row as routing makes it, in `state` after `attempts` runs (inputs: one made-up UID)."""
    return Job(
        idempotency_key=key,
        rule_name="thyroid",
        ruleset_version="test",
        network="thyroid-resnet34",
        outputs=["sr", "sc"],
        destinations=["pacs"],
        inputs=[f"1.2.3.{attempts}"] if inputs is None else inputs,
        study_uid="1.2.3",
        state=state,
        attempts=attempts,
    )


def test_an_interrupted_job_runs_again_until_it_was_interrupted_max_job_attempts_times(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "storage": {"root": str(tmp_path / "spool")},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112}},
            "max_job_attempts": 3,
        }
    )
    node = Node(settings)
    with node.db.session() as session:
        session.add_all(
            [job_row("once", 1), job_row("twice", 2), job_row("thrice", 3), job_row("waiting", 0, "pending")]
        )
    assert node.pipeline.recover() == 2
    with node.db.session() as session:
        jobs = {job.idempotency_key: job for job in session.scalars(select(Job))}
        states = {key: job.state for key, job in jobs.items()}
        failed = jobs["thrice"]
        events = [(e.kind, e.detail.get("job")) for e in session.scalars(select(Event))]
    assert states == {"once": "pending", "twice": "pending", "thrice": "failed", "waiting": "pending"}
    assert "3 times" in failed.error and failed.finished_at is not None
    assert events == [("failed", failed.id)]
    node.db.dispose()
