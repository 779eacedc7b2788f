"""Pipeline: the stages between the index and the send queue, driven by the node's worker thread.

route_ready turns complete inputs into jobs (one per matching rule, once per input set); run_next_job
runs one job and commits its outputs together with their deliveries, so a crash never half-sends."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from io import BytesIO

from pydicom import Dataset, dcmread
from sqlalchemy import select, update

from scintnode.assemble import collect_ready
from scintnode.config import Settings
from scintnode.db import Database, Instance, Job, Output, utcnow
from scintnode.infer import InputError, run_network
from scintnode.models.registry import Registry, UnknownNetwork
from scintnode.route import RuleSet
from scintnode.send import Dispatcher
from scintnode.spool import Spool

log = logging.getLogger(__name__)


def idempotency_key(rule_name: str, network: str, instance_uids: list[str]) -> str:
    """The same rule and network on the same set of inputs is the same job, whatever the order."""
    text = "\n".join([rule_name, network, *sorted(instance_uids)])
    return hashlib.sha256(text.encode()).hexdigest()


class Pipeline:
    def __init__(
        self,
        db: Database,
        spool: Spool,
        settings: Settings,
        rules: Callable[[], RuleSet],
        registry: Registry,
        dispatcher: Dispatcher,
    ) -> None:
        self.db = db
        self.spool = spool
        self.settings = settings
        self.rules = rules
        self.registry = registry
        self.dispatcher = dispatcher

    def recover(self) -> int:
        """Jobs left running by a stopped or crashed node go back to pending (their outputs never committed)."""
        with self.db.session() as session:
            result = session.execute(update(Job).where(Job.state == "running").values(state="pending"))
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if count:
            log.info("re-queued %d job(s) interrupted by the last stop", count)
        return count

    def route_ready(self) -> int:
        """Route every complete, unrouted input set; returns the number of jobs created."""
        rule_set = self.rules()
        created = 0
        with self.db.session() as session:
            now = utcnow()
            for unit in collect_ready(session, now, self.settings.completion):
                instances = [session.get(Instance, uid) for uid in unit.instance_uids]
                present = [i for i in instances if i is not None]
                for instance in present:
                    instance.routed_at = now
                try:
                    header = self._read_header(present[0].path)
                    decisions = rule_set.evaluate(header)
                except (OSError, ValueError, TypeError, AttributeError) as exc:
                    log.error("series %s cannot be routed: %s", unit.series_uid, exc)
                    self.db.record_event(
                        session, unit.study_uid, "unroutable", series_uid=unit.series_uid, error=str(exc)
                    )
                    continue
                self.db.record_event(
                    session,
                    unit.study_uid,
                    "complete",
                    series_uid=unit.series_uid,
                    layer=unit.layer,
                    instances=len(present),
                )
                matched = [d for d in decisions if d.fires]
                if not matched:
                    log.info("series %s complete (%s): no rule matched", unit.series_uid, unit.layer)
                    self.db.record_event(
                        session,
                        unit.study_uid,
                        "unmatched",
                        series_uid=unit.series_uid,
                        ruleset_version=rule_set.version,
                        rules=[d.rule.name for d in decisions],
                    )
                for decision in matched:
                    rule = decision.rule
                    uids = [i.sop_instance_uid for i in present]
                    key = idempotency_key(rule.name, rule.network, uids)
                    exists = session.scalar(select(Job.id).where(Job.idempotency_key == key))
                    if exists is None:
                        session.add(
                            Job(
                                idempotency_key=key,
                                rule_name=rule.name,
                                ruleset_version=rule_set.version,
                                network=rule.network,
                                outputs=list(rule.outputs),
                                destinations=list(rule.destinations),
                                inputs=uids,
                                study_uid=unit.study_uid,
                            )
                        )
                        created += 1
                    self.db.record_event(
                        session,
                        unit.study_uid,
                        "matched",
                        series_uid=unit.series_uid,
                        rule=rule.name,
                        network=rule.network,
                        ruleset_version=rule_set.version,
                        trace=list(decision.trace),
                        duplicate=exists is not None,
                    )
                    log.info("series %s matched rule %r -> %s", unit.series_uid, rule.name, rule.network)
        return created

    def run_next_job(self) -> bool:
        """Run the oldest pending job; returns False when there was none."""
        with self.db.session() as session:
            job = session.scalars(select(Job).where(Job.state == "pending").order_by(Job.id).limit(1)).first()
            if job is None:
                return False
            job.state, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
            job_id, network_name, outputs, inputs = job.id, job.network, list(job.outputs), list(job.inputs)
            paths = {
                i.sop_instance_uid: i.path
                for i in session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(inputs)))
            }
        try:
            missing = [uid for uid in inputs if uid not in paths]
            if missing:
                raise InputError(f"input instance(s) no longer in the index: {missing}")
            sources = [dcmread(self.spool.absolute(paths[uid])) for uid in inputs]
            network = self.registry.get(network_name)
            result = run_network(network, sources, outputs)
        except (InputError, UnknownNetwork, OSError, ValueError) as exc:
            self._fail(job_id, str(exc))
            return True
        except Exception as exc:  # a broken network must not stop the node
            log.exception("job %d crashed", job_id)
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
            return True
        stored = []
        for kind, ds in result.outputs:
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            stored.append(
                (kind, ds, self.spool.store_output(buffer.getvalue(), ds.StudyInstanceUID, ds.SOPInstanceUID))
            )
        finding = result.finding
        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            for kind, ds, file in stored:
                output = Output(
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    job_id=job_id,
                    sop_class_uid=str(ds.SOPClassUID),
                    kind=kind,
                    study_uid=str(ds.StudyInstanceUID),
                    path=file.path,
                )
                session.add(output)
                session.flush()
                self.dispatcher.enqueue(session, output, job.destinations)
            job.state, job.finished_at = "done", utcnow()
            job.inference_ms = result.inference_ms
            job.result = {
                "predicted": finding.predicted,
                "probabilities": dict(finding.probabilities),
                "hotspots": [
                    {"source": h.source_index, "frame": h.frame, "column": h.column, "row": h.row, "score": h.score}
                    for h in finding.hotspots
                ],
                "total_ms": result.total_ms,
            }
            spec = finding.model
            self.db.record_event(
                session,
                job.study_uid,
                "inferred",
                job=job_id,
                network=spec.name,
                version=spec.version,
                weights_sha256=spec.weights_sha256,
                predicted=finding.predicted,
                inference_ms=round(result.inference_ms, 1),
                total_ms=round(result.total_ms, 1),
            )
            self.db.record_event(
                session,
                job.study_uid,
                "written",
                job=job_id,
                outputs=[{"kind": k, "sop_instance_uid": str(d.SOPInstanceUID)} for k, d, _ in stored],
            )
        log.info(
            "job %d (%s) done: %s, inference %.0f ms, total %.0f ms",
            job_id,
            network_name,
            finding.predicted,
            result.inference_ms,
            result.total_ms,
        )
        return True

    def _fail(self, job_id: int, error: str) -> None:
        log.error("job %d failed: %s", job_id, error)
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            job.state, job.error, job.finished_at = "failed", error, utcnow()
            self.db.record_event(session, job.study_uid, "failed", job=job_id, error=error)

    def _read_header(self, relative: str) -> Dataset:
        return dcmread(self.spool.absolute(relative), stop_before_pixels=True)
