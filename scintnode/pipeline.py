"""Pipeline: the stages between the index and the send queue, driven by the node's worker thread.

route_ready turns complete inputs into jobs (one per matching rule, once per input set); run_next_job
runs one job and commits its outputs together with their deliveries, so a crash never half-sends."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from io import BytesIO

from pydicom import Dataset, dcmread
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from scintnode.assemble import NM_OBJECT, ReadyUnit, collect_ready
from scintnode.config import Settings
from scintnode.db import Database, Instance, Job, Output, utcnow
from scintnode.episodes import Arrival, EpisodeKeeper, JobRequest
from scintnode.infer import InputError, run_network
from scintnode.metrics import Metrics
from scintnode.models.registry import Registry, UnknownNetwork
from scintnode.route import RuleSet
from scintnode.route.facts import derive_facts
from scintnode.route.fixtures import route_of
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
        metrics: Metrics | None = None,
        shadow_rules: Callable[[], RuleSet | None] = lambda: None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.settings = settings
        self.rules = rules
        self.registry = registry
        self.dispatcher = dispatcher
        self.episodes = EpisodeKeeper(db)
        self.metrics = metrics
        self.shadow_rules = shadow_rules

    def recover(self) -> int:
        """Jobs left running by a stopped or crashed node go back to pending (their outputs never committed)."""
        with self.db.session() as session:
            result = session.execute(update(Job).where(Job.state == "running").values(state="pending"))
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if count:
            log.info("re-queued %d job(s) interrupted by the last stop", count)
        return count

    def route_ready(self) -> int:
        """Route every complete, unrouted input set and apply episode deadlines; returns jobs created."""
        rule_set = self.rules()
        created = 0
        with self.db.session() as session:
            now = utcnow()
            for unit in collect_ready(session, now, self.settings.completion):
                created += self._route_unit(session, rule_set, unit, now)
            rules = {rule.name: rule for rule in rule_set.rules}
            for request in self.episodes.expire(session, rules, now):
                created += self._create_job(session, rule_set.version, request)
        return created

    def _route_unit(self, session: Session, rule_set: RuleSet, unit: ReadyUnit, now: dt.datetime) -> int:
        present = [i for i in (session.get(Instance, uid) for uid in unit.instance_uids) if i is not None]
        for instance in present:
            instance.routed_at = now
        if not present:
            return 0
        if self.metrics is not None:
            self.metrics.completed.labels(unit.layer).inc()
        self.db.record_event(
            session, unit.study_uid, "complete", series_uid=unit.series_uid, layer=unit.layer, instances=len(present)
        )
        try:
            header = self._read_header(present[0].path)
            facts = derive_facts(header)
            decisions = rule_set.evaluate(header, facts)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("series %s cannot be routed: %s", unit.series_uid, exc)
            self.db.record_event(session, unit.study_uid, "unroutable", series_uid=unit.series_uid, error=str(exc))
            return 0
        self._compare_with_shadow(session, rule_set, header, unit)
        fired = [d for d in decisions if d.fires]
        if not fired:
            log.info("series %s complete (%s): no rule matched", unit.series_uid, unit.layer)
            self.db.record_event(
                session,
                unit.study_uid,
                "unmatched",
                series_uid=unit.series_uid,
                ruleset_version=rule_set.version,
                rules=[d.rule.name for d in decisions],
            )
        created = 0
        uids = tuple(i.sop_instance_uid for i in present)
        for decision in fired:
            rule = decision.rule
            self.db.record_event(
                session,
                unit.study_uid,
                "matched",
                series_uid=unit.series_uid,
                rule=rule.name,
                network=rule.network,
                ruleset_version=rule_set.version,
                trace=list(decision.trace),
            )
            log.info("series %s matched rule %r -> %s", unit.series_uid, rule.name, rule.network)
            if rule.episode is None:
                request = JobRequest(rule, None, uids, (), unit.study_uid, None, partial=False)
                created += self._create_job(session, rule_set.version, request)
                continue
            key = uids[0] if unit.layer == NM_OBJECT else unit.series_uid
            arrival = Arrival(header, facts, key, uids, unit.study_uid)
            for request in self.episodes.offer(session, rule, rule_set.version, arrival, now):
                created += self._create_job(session, rule_set.version, request)
        return created

    def _compare_with_shadow(self, session: Session, rule_set: RuleSet, header: Dataset, unit: ReadyUnit) -> None:
        """Shadow mode: evaluate the candidate rule set too, act on nothing, report where it would differ."""
        shadow = self.shadow_rules()
        if shadow is None:
            return
        active, candidate = route_of(rule_set, header), route_of(shadow, header)
        if active != candidate:
            log.info(
                "shadow rules %s would route series %s differently: %s instead of %s",
                shadow.version[:12],
                unit.series_uid,
                candidate,
                active,
            )
            self.db.record_event(
                session,
                unit.study_uid,
                "shadow-differs",
                series_uid=unit.series_uid,
                active=active,
                candidate=candidate,
                active_version=rule_set.version,
                candidate_version=shadow.version,
            )

    def _create_job(self, session: Session, version: str, request: JobRequest) -> int:
        rule = request.rule
        key = idempotency_key(rule.name, rule.network, list(request.inputs))
        existing = session.scalar(select(Job.id).where(Job.idempotency_key == key))
        if existing is not None:
            self.db.record_event(session, request.result_study_uid, "duplicate-skipped", rule=rule.name, job=existing)
            return 0
        job = Job(
            idempotency_key=key,
            rule_name=rule.name,
            ruleset_version=version,
            network=rule.network,
            outputs=list(rule.outputs),
            destinations=list(rule.destinations),
            inputs=list(request.inputs),
            slots=list(request.slots) if request.episode_id is not None else None,
            episode_id=request.episode_id,
            supersedes_job_id=request.supersedes_job_id,
            study_uid=request.result_study_uid,
        )
        session.add(job)
        session.flush()
        if request.episode_id is not None:
            self.episodes.mark_ran(session, request.episode_id, job.id)
            self.db.record_event(
                session,
                request.result_study_uid,
                "episode-complete",
                episode=request.episode_id,
                job=job.id,
                slots=list(request.slots),
                partial=request.partial,
                supersedes_job=request.supersedes_job_id,
            )
        return 1

    def run_next_job(self) -> bool:
        """Run the oldest pending job; returns False when there was none."""
        with self.db.session() as session:
            job = session.scalars(select(Job).where(Job.state == "pending").order_by(Job.id).limit(1)).first()
            if job is None:
                return False
            job.state, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
            job_id, network_name, outputs, inputs = job.id, job.network, list(job.outputs), list(job.inputs)
            slots, study_uid = (list(job.slots) if job.slots else None), job.study_uid
            predecessor_paths = self._predecessor_paths(session, job.supersedes_job_id)
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
            predecessors = [dcmread(self.spool.absolute(p)) for p in predecessor_paths]
            result = run_network(
                network, sources, outputs, slots=slots, result_study_uid=study_uid, predecessors=predecessors
            )
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
        if self.metrics is not None:
            self.metrics.inference.labels(network_name).observe(result.inference_ms / 1000)
            self.metrics.job_total.labels(network_name).observe(result.total_ms / 1000)
            self.metrics.jobs.labels(network_name, "done").inc()
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
            if self.metrics is not None:
                self.metrics.jobs.labels(job.network, "failed").inc()
            self.db.record_event(session, job.study_uid, "failed", job=job_id, error=error)

    @staticmethod
    def _predecessor_paths(session: Session, job_id: int | None) -> list[str]:
        if job_id is None:
            return []
        return list(session.scalars(select(Output.path).where(Output.job_id == job_id, Output.kind == "sr")))

    def _read_header(self, relative: str) -> Dataset:
        return dcmread(self.spool.absolute(relative), stop_before_pixels=True)
