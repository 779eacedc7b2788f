"""/metrics' time to result, read from the index: from a job's last input received to its last result
acknowledged by PACS, per network, over the last 100 finished jobs of the last day. A job with a result not
yet sent, or sent nowhere, is left out."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from scintnode.db import Database, Delivery, Instance, Job, Output, utcnow
from scintnode.metrics import IndexCollector


def _job(rows: list[object], job_id: int, network: str, received: list[float], sent: list[float | None]) -> None:
    """A done job whose inputs arrived `received` seconds ago and whose outputs were sent `sent` seconds ago."""
    now = utcnow()
    inputs = [f"1.2.{job_id}.1.{n}" for n in range(len(received))]
    rows.append(
        Job(
            id=job_id,
            idempotency_key=f"k{job_id}",
            rule_name="r",
            ruleset_version="v",
            network=network,
            outputs=["sr", "sc"],
            destinations=["pacs"],
            inputs=inputs,
            study_uid=f"1.2.{job_id}",
            state="done",
            finished_at=now,
        )
    )
    for uid, ago in zip(inputs, received, strict=True):
        rows.append(
            Instance(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
                study_uid=f"1.2.{job_id}",
                series_uid=f"1.2.{job_id}.1",
                path=uid,
                sha256="0" * 64,
                size=1,
                received_at=now - dt.timedelta(seconds=ago),
            )
        )
    for n, ago in enumerate(sent):
        uid = f"1.2.{job_id}.9.{n}"
        rows.append(
            Output(sop_instance_uid=uid, job_id=job_id, sop_class_uid="1.2", kind="sr", study_uid="1.2", path=uid)
        )
        sent_at = None if ago is None else now - dt.timedelta(seconds=ago)
        rows.append(
            Delivery(
                sop_instance_uid=uid,
                destination="pacs",
                state="sent" if ago is not None else "pending",
                sent_at=sent_at,
            )
        )


def test_time_to_result_quantiles_per_network_leave_out_jobs_not_yet_delivered(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    rows: list[object] = []
    _job(rows, 1, "thyroid", received=[100, 90], sent=[89, 88])  # last input 90 s ago, last result 88: 2 s
    _job(rows, 2, "thyroid", received=[50], sent=[46, 49])  # 4 s
    _job(rows, 3, "thyroid", received=[30], sent=[20])  # 10 s
    _job(rows, 4, "thyroid", received=[30], sent=[20, None])  # one output still pending: left out
    _job(rows, 5, "dscint", received=[10], sent=[9.5])  # 0.5 s
    _job(rows, 6, "dscint", received=[10], sent=[])  # no outputs: left out
    with db.session() as session:
        for kind in (Job, Instance, Output, Delivery):  # in the order the foreign keys need
            session.add_all(row for row in rows if isinstance(row, kind))
            session.flush()
    families = {family.name: family for family in IndexCollector(db).collect()}
    samples = {
        (s.labels["network"], s.labels["quantile"]): s.value
        for s in families["scintnode_time_to_result_seconds"].samples
    }
    assert samples == pytest.approx(
        {("thyroid", "0.5"): 4.0, ("thyroid", "0.95"): 10.0, ("dscint", "0.5"): 0.5, ("dscint", "0.95"): 0.5}, abs=0.01
    )
    db.dispose()
