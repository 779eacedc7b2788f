"""Rule operations against a node's state: reload a running node, replay past inputs on candidate rules.

Route stage, for ops staff: both read the node's index (and spool), so they work while it runs."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple, TextIO, cast

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scintnode.config import ConfigError, load_settings
from scintnode.db import Database, Event, Instance, in_list_chunks, utcnow
from scintnode.route.dsl import _duration
from scintnode.route.fixtures import route_of
from scintnode.route.loader import check_rule_set
from scintnode.rules_keeper import NODE_EVENTS

RELOAD_EVENTS = ("rules-reloaded", "rules-refused", "rules-unchanged")


def reload_running_node(config: Path | None, timeout: float, out: TextIO, err: TextIO) -> int:
    """Signal the node that uses `config` (SIGHUP) and wait for its answer in the index."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return 2
    pid_file = settings.storage.root.resolve() / "scintnode.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        print(f"error: no running node found ({pid_file} missing): is `scintnode serve` running?", file=err)
        return 2
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            last = session.scalar(select(func.max(Event.id))) or 0
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            print(f"error: the node (pid {pid}) is not running; stale {pid_file}", file=err)
            return 2
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with db.session() as session:
                answers = session.scalars(
                    select(Event).where(Event.id > last, Event.study_uid == NODE_EVENTS, Event.kind.in_(RELOAD_EVENTS))
                ).all()
            # the shadow (candidate) rule set reloads on the same signal; this command reports the active one
            answer = next((e for e in answers if e.detail.get("role", "active") == "active"), None)
            if answer is not None:
                detail = answer.detail
                if answer.kind == "rules-refused":
                    print(f"refused; the node keeps rule set {detail['kept'][:12]}", file=out)
                    for problem in detail.get("errors", []):
                        print(f"  {problem}", file=out)
                    return 1
                if answer.kind == "rules-unchanged":
                    print(f"unchanged: rule set {detail['version'][:12]} is already active", file=out)
                else:
                    print(f"reloaded: {detail['old'][:12]} -> {detail['new'][:12]}", file=out)
                return 0
            time.sleep(0.1)
        print(f"error: the node (pid {pid}) did not answer within {timeout:g} s", file=err)
        return 2
    finally:
        db.dispose()


def replay(config: Path | None, rules: Path | None, since: str, out: TextIO, err: TextIO) -> int:
    """Print every past input since `since` whose route under `rules` differs from what the node did."""
    try:
        settings = load_settings(config)
        seconds = _duration(since)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    directory = rules or settings.rules_dir
    rule_set, errors = check_rule_set(directory, destinations=sorted(settings.destinations))
    if rule_set is None:
        for error in errors:
            print(f"error: {error}", file=err)
        return 1
    cutoff = utcnow() - dt.timedelta(seconds=seconds)
    db = Database(settings.database_url)
    root = settings.storage.root.resolve()
    changed = examined = 0
    try:
        with db.session() as session:
            units = _routed_series_since(session, cutoff)
            fired = _rules_fired(session, sorted({unit.study_uid for unit in units.values()}))
        print(
            f"replaying {len(units)} input series since {since} on rule set {rule_set.version[:12]} from {directory}",
            file=out,
        )
        for series_uid, unit in sorted(units.items(), key=lambda kv: kv[1].received_at):
            path = root / unit.path
            if not path.exists():
                print(f"  series {series_uid}: header no longer in the spool (retention); skipped", file=out)
                continue
            try:
                header = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                print(f"  series {series_uid}: header unreadable ({path}: {exc}); skipped", file=out)
                continue
            examined += 1
            route = route_of(rule_set, header)
            before, after = sorted(fired.get(series_uid, set())), list(cast(list[str], route["fires"]))
            if before != after:
                changed += 1
                print(
                    f"  series {series_uid} (study {unit.study_uid}): was {before or 'no rule'}, "
                    f"would be {after or 'no rule'} {route['slots'] or ''}",
                    file=out,
                )
        print(f"{changed} of {examined} series would route differently", file=out)
        return 0
    finally:
        db.dispose()


class _Unit(NamedTuple):
    study_uid: str
    path: str
    received_at: dt.datetime


def _routed_series_since(session: Session, cutoff: dt.datetime) -> dict[str, _Unit]:
    """Each series routed since `cutoff`, by its first instance received: read through the routed_at index,
    columns only, so a replay of a week beside months of history reads that week."""
    units: dict[str, _Unit] = {}
    query = (
        select(Instance.series_uid, Instance.study_uid, Instance.path, Instance.received_at)
        .where(Instance.routed_at >= cutoff)
        .order_by(Instance.received_at)
    )
    for series_uid, study_uid, path, received_at in session.execute(query):
        units.setdefault(series_uid, _Unit(study_uid, path, received_at))
    return units


def _rules_fired(session: Session, study_uids: list[str]) -> dict[str, set[str]]:
    """The rules that matched each series of these studies, from their `matched` events."""
    fired: dict[str, set[str]] = defaultdict(set)
    for chunk in in_list_chunks(study_uids):
        for detail in session.scalars(select(Event.detail).where(Event.study_uid.in_(chunk), Event.kind == "matched")):
            fired[str(detail.get("series_uid"))].add(str(detail.get("rule")))
    return fired
