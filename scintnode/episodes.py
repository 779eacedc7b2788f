"""Episodes: gather one network's inputs across series, studies and days, per patient, before it runs.

Assemble stage, second layer: a complete input that fires a rule with an `episode` is put into a slot of
that patient's open episode; when every slot is filled and the constraints hold, a job is asked for.
State lives in the index, so episodes survive restarts and rule reloads."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass

from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from scintnode.db import Database, Episode, EpisodeMember
from scintnode.route.engine import EpisodePlan, Rule
from scintnode.route.facts import NMFacts, acquisition_moment

log = logging.getLogger(__name__)

# due episodes one routing pass applies deadlines to: about 1.3 ms each, so a node back from a long stop with
# thousands due holds the index for a fraction of a second a pass, not for tens of seconds in one
EXPIRE_BATCH = 200


@dataclass(frozen=True)
class JobRequest:
    """What the pipeline must create a job for: inputs in slot order, the study the results go into."""

    rule: Rule
    episode_id: int | None
    inputs: tuple[str, ...]
    slots: tuple[str, ...]
    result_study_uid: str
    supersedes_job_id: int | None
    partial: bool


@dataclass(frozen=True)
class Arrival:
    """A complete input (an NM object or a series) that fired an episode rule."""

    header: Dataset
    facts: NMFacts
    unit: str
    instance_uids: tuple[str, ...]
    study_uid: str


def join_key(header: Dataset) -> str | None:
    """Patient ID, qualified by Issuer of Patient ID when present: images of another patient never join."""
    patient_id = str(header.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    issuer = str(header.get("IssuerOfPatientID", "") or "").strip()
    return f"{patient_id}^{issuer}" if issuer else patient_id


class EpisodeKeeper:
    def __init__(self, db: Database) -> None:
        self.db = db

    def offer(self, session: Session, rule: Rule, version: str, arrival: Arrival, now: dt.datetime) -> list[JobRequest]:
        plan = rule.episode
        assert plan is not None
        study = arrival.study_uid
        key = join_key(arrival.header)
        if key is None:
            self._event(
                session,
                study,
                "episode-unjoinable",
                rule=rule.name,
                unit=arrival.unit,
                reason="no Patient ID, so the image cannot be joined with others",
            )
            return []
        matches = plan.classify(arrival.header, arrival.facts)
        if len(matches) != 1:
            what = "none of its slots" if not matches else f"several slots ({', '.join(s.name for s, _ in matches)})"
            facts = {name: fact.describe() for name, fact in arrival.facts.items() if fact.value is not None}
            log.warning(
                "input %s fits %s of rule %s: reported as ambiguous, not guessed", arrival.unit, what, rule.name
            )
            self._event(
                session,
                study,
                "episode-ambiguous",
                rule=rule.name,
                unit=arrival.unit,
                reason=f"the image fits {what}",
                facts=facts,
            )
            return []
        slot, trace = matches[0]
        acquired = acquisition_moment(arrival.header) or now
        episode = self._episode_for(session, rule, plan, key, acquired, version, now)
        members = self._members(session, episode.id)
        if any(m.unit == arrival.unit for m in members):
            return []  # the same input offered again (a restart between routing and commit)
        supersedes: int | None = None
        if episode.state == "ran":
            if plan.late_data == "ignore":
                self._event(
                    session,
                    study,
                    "late-data-ignored",
                    rule=rule.name,
                    episode=episode.id,
                    slot=slot.name,
                    unit=arrival.unit,
                )
                return []
            supersedes = episode.last_job_id
            episode.state = "open"
        in_slot = sorted({m.unit: m.added_at for m in members if m.slot == slot.name}.items(), key=lambda kv: kv[1])
        if len(in_slot) >= slot.count:
            dropped = in_slot[0][0]  # the newest input wins: a repeat acquisition replaces the first
            for member in members:
                if member.unit == dropped:
                    session.delete(member)
            self._event(
                session,
                study,
                "episode-replaced",
                rule=rule.name,
                episode=episode.id,
                slot=slot.name,
                replaced=dropped,
                by=arrival.unit,
            )
        values = plan.values(arrival.header, arrival.facts)
        for uid in arrival.instance_uids:
            session.add(
                EpisodeMember(
                    episode_id=episode.id,
                    slot=slot.name,
                    unit=arrival.unit,
                    sop_instance_uid=uid,
                    study_uid=study,
                    acquired_at=acquired,
                    values=values,
                    added_at=now,
                )
            )
        session.flush()
        self._event(
            session,
            study,
            "episode-slot-filled",
            rule=rule.name,
            episode=episode.id,
            slot=slot.name,
            unit=arrival.unit,
            trace=list(trace),
        )
        return self._ready(session, rule, plan, episode, supersedes, at_deadline=False)

    def expire(
        self,
        session: Session,
        rules: dict[str, Rule],
        now: dt.datetime,
        include_reported: bool,
        batch: int = EXPIRE_BATCH,
    ) -> list[JobRequest]:
        """Apply the deadline policy of up to `batch` open episodes whose deadline has passed, earliest first;
        the next routing pass takes the next ones (a pass is one transaction, which the receiver waits behind).

        An episode left open past its deadline (keep-waiting, or its rule lost its episode) was reported once;
        it is read again only with `include_reported`, when the rules changed: 0.14 ms an episode, in every
        routing pass, added up."""
        requests: list[JobRequest] = []
        overdue = select(Episode).where(Episode.state == "open", Episode.deadline_at <= now)
        due = list(
            session.scalars(
                overdue.where(Episode.deadline_reported.is_(False))
                .order_by(Episode.deadline_at, Episode.id)
                .limit(batch)
            )
        )
        if include_reported:
            due += session.scalars(overdue.where(Episode.deadline_reported.is_(True)))
        for episode in due:
            rule = rules.get(episode.rule_name)
            members = self._members(session, episode.id)
            study = members[-1].study_uid if members else ""
            if rule is None or rule.episode is None:
                if not episode.deadline_reported:
                    episode.deadline_reported = True
                    self._event(
                        session,
                        study,
                        "episode-waiting",
                        episode=episode.id,
                        reason=f"rule {episode.rule_name} no longer has an episode; kept for the record",
                    )
                continue
            plan = rule.episode
            if plan.on_deadline == "keep-waiting":
                if not episode.deadline_reported:
                    episode.deadline_reported = True
                    self._event(
                        session,
                        study,
                        "episode-waiting",
                        episode=episode.id,
                        reason="deadline passed; on_deadline keep-waiting",
                        missing=self._missing(plan, members),
                    )
                continue
            ready = (
                self._ready(session, rule, plan, episode, None, at_deadline=True)
                if plan.on_deadline == "run-partial"
                else []
            )
            if ready:
                requests.extend(ready)
                continue
            episode.state = "gave-up"
            episode.note = (
                f"deadline passed; missing {', '.join(self._missing(plan, members)) or 'nothing'}"
                f"{'' if plan.on_deadline == 'give-up' else '; required slots or constraints not met'}"
            )
            log.warning("episode %d of rule %s gave up: %s", episode.id, rule.name, episode.note)
            self._event(session, study, "episode-gave-up", rule=rule.name, episode=episode.id, reason=episode.note)
        return requests

    def mark_ran(self, session: Session, episode_id: int, job_id: int) -> None:
        episode = session.get(Episode, episode_id)
        if episode is not None:
            episode.state, episode.last_job_id, episode.runs = "ran", job_id, episode.runs + 1

    # -- internals ----------------------------------------------------------------------------------------
    def _episode_for(
        self,
        session: Session,
        rule: Rule,
        plan: EpisodePlan,
        key: str,
        acquired: dt.datetime,
        version: str,
        now: dt.datetime,
    ) -> Episode:
        window = dt.timedelta(seconds=plan.window_seconds)
        candidates = session.scalars(
            select(Episode)
            .where(Episode.rule_name == rule.name, Episode.join_key == key, Episode.state.in_(("open", "ran")))
            .order_by(Episode.id.desc())
        ).all()
        for episode in candidates:
            if abs(acquired - episode.first_acquired_at) <= window:
                if acquired < episode.first_acquired_at:
                    episode.first_acquired_at = acquired
                return episode
        episode = Episode(
            rule_name=rule.name,
            join_key=key,
            state="open",
            ruleset_version=version,
            first_acquired_at=acquired,
            created_at=now,
            deadline_at=now + dt.timedelta(seconds=plan.deadline_seconds),
        )
        session.add(episode)
        session.flush()
        return episode

    def _members(self, session: Session, episode_id: int) -> list[EpisodeMember]:
        return list(
            session.scalars(
                select(EpisodeMember).where(EpisodeMember.episode_id == episode_id).order_by(EpisodeMember.id)
            )
        )

    @staticmethod
    def _filled(plan: EpisodePlan, members: list[EpisodeMember]) -> dict[str, int]:
        units: dict[str, set[str]] = defaultdict(set)
        for member in members:
            units[member.slot].add(member.unit)
        return {slot.name: len(units[slot.name]) for slot in plan.slots}

    def _missing(self, plan: EpisodePlan, members: list[EpisodeMember]) -> list[str]:
        filled = self._filled(plan, members)
        return [s.name for s in plan.slots if filled[s.name] < s.count]

    def _ready(
        self,
        session: Session,
        rule: Rule,
        plan: EpisodePlan,
        episode: Episode,
        supersedes: int | None,
        at_deadline: bool,
    ) -> list[JobRequest]:
        members = self._members(session, episode.id)
        filled = self._filled(plan, members)
        # with every slot optional, run-partial needs at least one input
        required_done = all(filled[s.name] >= s.count for s in plan.slots if s.required) and bool(members)
        all_done = all(filled[s.name] >= s.count for s in plan.slots)
        if not (all_done or (at_deadline and required_done)):
            return []
        values: dict[str, list[str | float | None]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        for member in members:
            if (member.slot, member.unit) not in seen:
                seen.add((member.slot, member.unit))
                for constraint in plan.constraints:
                    if constraint.value.key in member.values:
                        values[f"{member.slot}|{constraint.value.key}"].append(member.values[constraint.value.key])
        failures = []
        for constraint in plan.constraints:
            per_slot = {slot: values.get(f"{slot}|{constraint.value.key}", []) for slot in constraint.slots}
            ok, why = constraint.check(per_slot)
            if ok is False or (ok is None and not at_deadline):
                failures.append(why)
        study = members[-1].study_uid if members else ""
        if failures:
            self._event(
                session, study, "episode-constraint-failed", rule=rule.name, episode=episode.id, reasons=failures
            )
            log.warning("episode %d of rule %s: constraints not met: %s", episode.id, rule.name, "; ".join(failures))
            return []
        order = {slot.name: index for index, slot in enumerate(plan.slots)}
        ordered = sorted(members, key=lambda m: (order[m.slot], m.acquired_at, m.id))
        latest = max(members, key=lambda m: (m.acquired_at, m.id))
        return [
            JobRequest(
                rule=rule,
                episode_id=episode.id,
                inputs=tuple(m.sop_instance_uid for m in ordered),
                slots=tuple(m.slot for m in ordered),
                result_study_uid=latest.study_uid,
                supersedes_job_id=supersedes,
                partial=not all_done,
            )
        ]

    def _event(self, session: Session, study_uid: str, kind: str, **detail: object) -> None:
        self.db.record_event(session, study_uid, kind, **detail)
