"""Pipeline: the stages between the index and the send queue, driven by the node's worker thread.

route_ready turns complete inputs into jobs (one per matching rule, once per input set); run_next_job
runs one job and commits its outputs together with their deliveries, so a crash never half-sends."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from pydicom import Dataset, dcmread
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from scintnode.assemble import NM_OBJECT, ReadyUnit, collect_ready
from scintnode.config import Settings
from scintnode.db import INSERT_EVENTS, Database, Episode, Instance, Job, Output, event_row, in_list_chunks, utcnow
from scintnode.episodes import Arrival, EpisodeKeeper, JobRequest
from scintnode.infer import InputError, JobResult, run_network
from scintnode.job_watchdog import JobWatchdog
from scintnode.metrics import Metrics
from scintnode.models.registry import Registry, UnknownNetwork
from scintnode.route import RuleSet
from scintnode.route.facts import derive_facts
from scintnode.route.fixtures import route_of
from scintnode.send import Dispatcher
from scintnode.spool import Spool

log = logging.getLogger(__name__)
_INSTANCES = cast(Table, Instance.__table__)
_EPISODES = cast(Table, Episode.__table__)
# built once, so each routing pass reuses their compiled form
_MARK_ROUTED = (
    update(_INSTANCES)
    .where(_INSTANCES.c.sop_instance_uid.in_(bindparam("uids", expanding=True)))
    .values(routed_at=bindparam("now"))
)
_EPISODE_DUE = (
    select(_EPISODES.c.id).where(_EPISODES.c.state == "open", _EPISODES.c.deadline_at <= bindparam("now")).limit(1)
)
# an episode left open past its deadline (keep-waiting, or its rule lost its episode) is reported once; after
# that only a rule set change can change what its deadline means
_UNREPORTED_EPISODE_DUE = _EPISODE_DUE.where(_EPISODES.c.deadline_reported.is_(False))


def idempotency_key(rule_name: str, network: str, instance_uids: list[str]) -> str:
    """The same rule and network on the same set of inputs is the same job, whatever the order."""
    text = "\n".join([rule_name, network, *sorted(instance_uids)])
    return hashlib.sha256(text.encode()).hexdigest()


class _EventBuffer:
    """Audit events of a routing pass, inserted together; flushed before anything else records events, so
    the audit keeps its order."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rows: list[dict[str, Any]] = []

    def add(self, study_uid: str, kind: str, **detail: Any) -> None:
        self.rows.append(event_row(study_uid, kind, utcnow(), **detail))

    def flush(self) -> None:
        if self.rows:
            self.session.flush()  # events the ORM holds were recorded first
            self.session.connection().execute(INSERT_EVENTS, self.rows)
            self.rows = []


def _mark_routed(session: Session, uids: list[str], now: dt.datetime) -> None:
    """Mark instances routed with Core statements (no ORM object of them is loaded in a routing pass)."""
    for chunk in in_list_chunks(uids):
        session.connection().execute(_MARK_ROUTED, {"uids": chunk, "now": now})


def _episodes_due(session: Session, now: dt.datetime, include_reported: bool) -> bool:
    """Whether any open episode's deadline has passed (and was not reported yet, unless `include_reported`):
    a cheap check before the full deadline pass."""
    session.flush()
    query = _EPISODE_DUE if include_reported else _UNREPORTED_EPISODE_DUE
    return session.connection().execute(query, {"now": now}).first() is not None


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
        # during a burst, passes start at most this often, so each routes (and commits) many arrivals at once;
        # the first arrival after a quiet spell is routed at once
        self.min_pass_seconds = 0.05
        self._deadlines_read_with: str | None = None  # the rule set the last deadline pass read every due episode with
        self._last_pass = -math.inf
        self.watchdog = JobWatchdog(settings.job_time_limit_seconds, self._fail)

    def recover(self) -> int:
        """Jobs left running by a stopped or crashed node go back to pending (their outputs never committed),
        unless they were running at `max_job_attempts` such stops: those fail, so one input that kills the
        process cannot keep it in a crash loop. Returns the jobs re-queued."""
        limit = self.settings.max_job_attempts
        with self.db.session() as session:
            result = session.execute(
                update(Job).where(Job.state == "running", Job.attempts < limit).values(state="pending")
            )
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
            given_up = list(session.scalars(select(Job.id).where(Job.state == "running")))
        if count:
            log.info("re-queued %d job(s) interrupted by the last stop", count)
        for job_id in given_up:
            self._fail(
                job_id,
                f"the node stopped while running this job {limit} times (a crash, a kill, or a stop that timed "
                "out); it is not run again automatically",
            )
        return count

    def route_ready(self) -> int:
        """Route every complete, unrouted input set and apply episode deadlines; returns jobs created.

        All units ready now are routed in one transaction (one commit for a burst of NM objects)."""
        wait = self._last_pass + self.min_pass_seconds - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_pass = time.monotonic()
        rule_set = self.rules()
        shadow = self.shadow_rules()
        created = 0
        with self.db.session() as session:
            now = utcnow()
            units = collect_ready(session, now, self.settings.completion)
            _mark_routed(session, [uid for unit in units for uid in unit.instance_uids], now)
            events = _EventBuffer(session)
            for unit in units:
                created += self._route_unit(session, rule_set, shadow, unit, now, events)
            events.flush()
            recheck = rule_set.version != self._deadlines_read_with  # at start, and after a reload
            if _episodes_due(session, now, include_reported=recheck):
                rules = {rule.name: rule for rule in rule_set.rules}
                for request in self.episodes.expire(session, rules, now, include_reported=recheck):
                    created += self._create_job(session, rule_set.version, request)
        self._deadlines_read_with = rule_set.version
        return created

    def _route_unit(
        self,
        session: Session,
        rule_set: RuleSet,
        shadow: RuleSet | None,
        unit: ReadyUnit,
        now: dt.datetime,
        events: _EventBuffer,
    ) -> int:
        uids = unit.instance_uids
        if not uids:
            return 0
        if self.metrics is not None:
            self.metrics.completed.labels(unit.layer).inc()
        events.add(unit.study_uid, "complete", series_uid=unit.series_uid, layer=unit.layer, instances=len(uids))
        if not rule_set.rules and shadow is None:
            # nothing reads the header: leave the file alone
            self._record_unmatched(events, rule_set, unit, [])
            return 0
        try:
            path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == uids[0]))
            if path is None:
                return 0
            header = self._read_header(path)
            facts = derive_facts(header)
            decisions = rule_set.evaluate(header, facts)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("series %s cannot be routed: %s", unit.series_uid, exc)
            events.add(unit.study_uid, "unroutable", series_uid=unit.series_uid, error=str(exc))
            return 0
        self._compare_with_shadow(rule_set, shadow, header, unit, events)
        fired = [d for d in decisions if d.fires]
        if not fired:
            self._record_unmatched(events, rule_set, unit, [d.rule.name for d in decisions])
        created = 0
        for decision in fired:
            rule = decision.rule
            events.add(
                unit.study_uid,
                "matched",
                series_uid=unit.series_uid,
                rule=rule.name,
                network=rule.network,
                ruleset_version=rule_set.version,
                trace=list(decision.trace),
            )
            events.flush()  # jobs and episodes record their own events after these
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

    @staticmethod
    def _record_unmatched(events: _EventBuffer, rule_set: RuleSet, unit: ReadyUnit, rules: list[str]) -> None:
        log.info("series %s complete (%s): no rule matched", unit.series_uid, unit.layer)
        events.add(
            unit.study_uid,
            "unmatched",
            series_uid=unit.series_uid,
            ruleset_version=rule_set.version,
            rules=rules,
        )

    @staticmethod
    def _compare_with_shadow(
        rule_set: RuleSet, shadow: RuleSet | None, header: Dataset, unit: ReadyUnit, events: _EventBuffer
    ) -> None:
        """Shadow mode: evaluate the candidate rule set too, act on nothing, report where it would differ."""
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
            events.add(
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
        with self.watchdog.running(job_id):
            self._run_claimed(job_id, network_name, outputs, inputs, slots, study_uid, predecessor_paths, paths)
        return True

    def _run_claimed(
        self,
        job_id: int,
        network_name: str,
        outputs: list[str],
        inputs: list[str],
        slots: list[str] | None,
        study_uid: str,
        predecessor_paths: list[str],
        paths: dict[str, str],
    ) -> None:
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
            return
        except Exception as exc:  # a broken network must not stop the node
            log.exception("job %d crashed", job_id)
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
            return
        with self.watchdog.committing():
            self._commit(job_id, network_name, result)

    def _commit(self, job_id: int, network_name: str, result: JobResult) -> None:
        """Store the job's result files, index them with their deliveries, and mark the job done."""
        stored = [
            (
                out.kind,
                out.dataset,
                self.spool.store_output(out.encoded, out.dataset.StudyInstanceUID, out.dataset.SOPInstanceUID),
            )
            for out in result.outputs
        ]
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
                "explain_ms": result.explain_ms,
                "total_ms": result.total_ms,
                "writing_ms": result.writing_ms,
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
                explain_ms=round(result.explain_ms, 1),
                total_ms=round(result.total_ms, 1),
                writing_ms=round(result.writing_ms, 1),
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
            "job %d (%s) done: %s, network %.0f ms, Grad-CAM %.0f ms, total %.0f ms",
            job_id,
            network_name,
            finding.predicted,
            result.inference_ms,
            result.explain_ms,
            result.total_ms,
        )

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
