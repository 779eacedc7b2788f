"""Metrics: Prometheus counters the stages update as they act, and gauges read from the index on scrape.

One registry per node (no process-global state), exposed by web.py at /metrics."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scintnode.db import Database, Delivery, Episode, Instance, Job, Output, Series, in_list_chunks, utcnow


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.received = Counter(
            "scintnode_instances_received", "Instances stored and indexed", ["calling_ae"], registry=self.registry
        )
        self.rejected = Counter(
            "scintnode_instances_rejected", "Instances refused, by C-STORE status", ["status"], registry=self.registry
        )
        self.completed = Counter(
            "scintnode_inputs_completed", "Complete input sets, by completion layer", ["layer"], registry=self.registry
        )
        self.inference = Histogram(
            "scintnode_inference_seconds",
            "Time inside the network per job: its forward pass(es), without Grad-CAM",
            ["network"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.job_total = Histogram(
            "scintnode_job_seconds",
            "Whole job: decode, network, Grad-CAM, writing DICOM",
            ["network"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.jobs = Counter(
            "scintnode_jobs", "Finished jobs, by outcome", ["network", "outcome"], registry=self.registry
        )

    def watch_index(self, db: Database) -> None:
        self.registry.register(IndexCollector(db))


class IndexCollector(Collector):
    """Queue depths, deliveries by outcome and time to result, read from the index at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("scintnode_queue_depth", "Work waiting, by queue", labels=["queue"])
        deliveries = GaugeMetricFamily(
            "scintnode_deliveries",
            "Deliveries by destination and state (sent, pending, dead)",
            labels=["destination", "state"],
        )
        to_result = GaugeMetricFamily(
            "scintnode_time_to_result_seconds",
            "From the last input instance received to the last result acknowledged by PACS (last 100 jobs)",
            labels=["network", "quantile"],
        )
        with self.db.session() as session:
            depth.add_metric(["jobs"], session.scalar(select(func.count()).where(Job.state == "pending")) or 0)
            depth.add_metric(
                ["open_series"], session.scalar(select(func.count()).where(Series.completed_at.is_(None))) or 0
            )
            depth.add_metric(
                ["unrouted_instances"], session.scalar(select(func.count()).where(Instance.routed_at.is_(None))) or 0
            )
            depth.add_metric(
                ["open_episodes"], session.scalar(select(func.count()).where(Episode.state == "open")) or 0
            )
            for destination, state, count in session.execute(
                select(Delivery.destination, Delivery.state, func.count()).group_by(
                    Delivery.destination, Delivery.state
                )
            ):
                deliveries.add_metric([destination, state], count)
                if state == "pending":
                    depth.add_metric([f"deliveries:{destination}"], count)
            for network, values in _times_to_result(session).items():
                to_result.add_metric([network, "0.5"], statistics.median(values))
                to_result.add_metric([network, "0.95"], _quantile(values, 0.95))
        yield depth
        yield deliveries
        yield to_result


def _times_to_result(session: Session) -> dict[str, list[float]]:
    """Seconds from each recent job's last input received to its last result sent, by network, in three
    queries whatever the number of jobs (a scrape comes every few seconds)."""
    since = utcnow() - dt.timedelta(days=1)
    jobs = session.execute(
        select(Job.id, Job.network, Job.inputs)
        .where(Job.state == "done", Job.finished_at >= since)
        .order_by(Job.id.desc())
        .limit(100)
    ).all()
    last_sent: dict[int, dt.datetime] = {}
    for job_id, sent_at, total, sent in session.execute(
        select(Output.job_id, func.max(Delivery.sent_at), func.count(), func.count(Delivery.sent_at))
        .join(Delivery, Delivery.sop_instance_uid == Output.sop_instance_uid)
        .where(Output.job_id.in_([job.id for job in jobs]))
        .group_by(Output.job_id)
    ):
        if total and sent == total and sent_at is not None:
            last_sent[job_id] = sent_at
    delivered = [job for job in jobs if job.id in last_sent]
    received = _received_at(session, sorted({uid for job in delivered for uid in job.inputs}))
    times: dict[str, list[float]] = {}
    for job in delivered:
        arrivals = [received[uid] for uid in job.inputs if uid in received]
        if arrivals:
            times.setdefault(job.network, []).append(max(0.0, (last_sent[job.id] - max(arrivals)).total_seconds()))
    return times


def _received_at(session: Session, uids: list[str]) -> dict[str, dt.datetime]:
    found: dict[str, dt.datetime] = {}
    for chunk in in_list_chunks(uids):
        query = select(Instance.sop_instance_uid, Instance.received_at).where(Instance.sop_instance_uid.in_(chunk))
        found.update((uid, at) for uid, at in session.execute(query))
    return found


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
