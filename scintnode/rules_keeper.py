"""The active rule set of a running node: loaded, validated, swapped atomically on reload, recorded.

Reload comes from a change in the rules folder, SIGHUP or `scintnode rules reload`; an invalid set is
refused with its errors and the running one stays. Jobs keep the version they were created with."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scintnode.db import Database, RuleSetRecord, utcnow
from scintnode.route import RuleSet
from scintnode.route.loader import check_rule_set, rule_files

log = logging.getLogger(__name__)

NODE_EVENTS = ""  # study UID under which node-wide events (rule reloads) are recorded


@dataclass(frozen=True)
class ReloadOutcome:
    accepted: bool
    changed: bool
    version: str  # the version now active
    message: str


def folder_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the rule files: cheap to poll for changes."""
    try:
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in rule_files(directory))
    except OSError:
        return ()


class RulesKeeper:
    def __init__(
        self,
        db: Database,
        directory: Path,
        networks: Iterable[str],
        destinations: Iterable[str],
        role: str = "active",
    ) -> None:
        self.db = db
        self.role = role  # "active" routes; "candidate" (shadow mode) is only compared
        self.directory = directory
        self.networks = tuple(networks)
        self.destinations = tuple(destinations)
        self._lock = threading.Lock()
        self._fingerprint = folder_fingerprint(directory)
        rule_set, errors = check_rule_set(directory, networks=self.networks, destinations=self.destinations)
        if rule_set is None:
            raise errors[0]
        self._active = rule_set
        self._record(rule_set)

    @property
    def active(self) -> RuleSet:
        return self._active  # one reference read: a reload swaps it atomically

    def reload(self, reason: str) -> ReloadOutcome:
        with self._lock:
            self._fingerprint = folder_fingerprint(self.directory)
            rule_set, errors = check_rule_set(self.directory, networks=self.networks, destinations=self.destinations)
            old = self._active
            if rule_set is None:
                problems = [str(e) for e in errors]
                log.error("rule reload (%s) refused; keeping %s: %s", reason, old.version[:12], "; ".join(problems))
                with self.db.session() as session:
                    self.db.record_event(
                        session,
                        NODE_EVENTS,
                        "rules-refused",
                        reason=reason,
                        kept=old.version,
                        errors=problems,
                        role=self.role,
                    )
                return ReloadOutcome(False, False, old.version, "refused: " + "; ".join(problems))
            if rule_set.version == old.version:
                with self.db.session() as session:
                    self.db.record_event(
                        session, NODE_EVENTS, "rules-unchanged", reason=reason, version=old.version, role=self.role
                    )
                return ReloadOutcome(True, False, old.version, "unchanged")
            self._active = rule_set
            self._record(rule_set)
            log.info("rules reloaded (%s): %s -> %s", reason, old.version[:12], rule_set.version[:12])
            with self.db.session() as session:
                self.db.record_event(
                    session,
                    NODE_EVENTS,
                    "rules-reloaded",
                    reason=reason,
                    old=old.version,
                    new=rule_set.version,
                    rules=[r.name for r in rule_set.rules],
                    role=self.role,
                )
            return ReloadOutcome(True, True, rule_set.version, f"{old.version[:12]} -> {rule_set.version[:12]}")

    def reload_if_changed(self) -> ReloadOutcome | None:
        """Poll the folder; reload when a rule file was added, removed or edited."""
        if folder_fingerprint(self.directory) == self._fingerprint:
            return None
        return self.reload("rules folder changed")

    def _record(self, rule_set: RuleSet) -> None:
        files = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in rule_files(self.directory)}
        with self.db.session() as session:
            record = session.get(RuleSetRecord, rule_set.version)
            if record is None:
                session.add(RuleSetRecord(version=rule_set.version, directory=str(self.directory), files=files))
            else:
                record.last_active_at = utcnow()
