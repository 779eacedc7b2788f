"""The node: wires receive, pipeline, send and housekeeping together and owns start and stop.

One worker thread runs the pipeline (route, infer, write) when woken by new data or a deadline; the
receive threads only store; dispatch runs on the scheduler. Stop parks work safely in the index."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from scintnode.config import ConfigError, Settings
from scintnode.db import Database
from scintnode.metrics import Metrics
from scintnode.models.catalog import network_names
from scintnode.models.registry import Registry, default_registry
from scintnode.pipeline import Pipeline
from scintnode.receive import Receiver
from scintnode.retention import purge_expired
from scintnode.route import RuleSet
from scintnode.rules_keeper import RulesKeeper
from scintnode.schedule import Housekeeping
from scintnode.send import Dispatcher
from scintnode.spool import Spool
from scintnode.web import OpsServer

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.spool = Spool(settings.storage.root, settings.storage.min_free_bytes)
        self.db = Database(settings.database_url)
        self.db.create_schema()
        self.rules = RulesKeeper(self.db, settings.rules_dir, network_names(), list(settings.destinations))
        self.shadow: RulesKeeper | None = None
        if settings.shadow_rules_dir is not None:
            self.shadow = RulesKeeper(
                self.db, settings.shadow_rules_dir, network_names(), list(settings.destinations), role="candidate"
            )
        self.metrics = Metrics()
        self.metrics.watch_index(self.db)
        self._check_inference_device()
        self.registry = registry or default_registry(settings.inference_device)
        self.dispatcher = Dispatcher(
            self.db, self.spool.root, settings.destinations, settings.dispatch, settings.node.ae_title
        )
        self.pipeline = Pipeline(
            self.db,
            self.spool,
            settings,
            lambda: self.rules.active,
            self.registry,
            self.dispatcher,
            metrics=self.metrics,
            shadow_rules=lambda: self.shadow.active if self.shadow else None,
        )
        self.receiver = Receiver(self.db, self.spool, settings.node, on_change=self.wake, metrics=self.metrics)
        self.web: OpsServer | None = None
        self.housekeeping = Housekeeping()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="scintnode-pipeline", daemon=True)

    @property
    def port(self) -> int:
        return self.receiver.port

    def wake(self) -> None:
        self._wake.set()

    @property
    def rule_set(self) -> RuleSet:
        return self.rules.active

    @property
    def pid_file(self) -> Path:
        return self.spool.root / "scintnode.pid"

    def reload_rules(self, reason: str) -> None:
        self.rules.reload(reason)
        if self.shadow is not None:
            self.shadow.reload(reason)

    def _rule_networks(self) -> list[str]:
        return sorted({rule.network for rule in self.rule_set.rules})

    def _check_inference_device(self) -> None:
        """A GPU the config names but this machine lacks would fail every job: refuse to start instead."""
        if self.settings.inference_device in ("auto", "cpu") or not self._rule_networks():
            return
        from scintnode.models.device import DeviceUnavailable, torch_device  # imports torch

        try:
            torch_device(self.settings.inference_device)
        except DeviceUnavailable as exc:
            raise ConfigError(f"inference_device: {exc}") from exc

    def _preload_networks(self) -> None:
        """Load every network the rules use, so no job pays for loading; a missing one is reported, not fatal."""
        names = self._rule_networks()
        for name in names:
            try:
                self.registry.get(name)
            except (OSError, LookupError, ValueError, RuntimeError) as exc:
                log.error("network %s could not be loaded (its jobs will fail until it can): %s", name, exc)
        log.info("networks loaded: %s", ", ".join(names))

    def _import_network_code(self) -> None:
        """Import the code (and torch) of every network the rules use, not their weights: a node whose rules use
        no network never imports torch, and one whose rules do pays the import at start, not at its first job."""
        for name in self._rule_networks():
            try:
                self.registry.import_code(name)
            except ImportError as exc:
                log.error("network %s's code could not be imported (its jobs will fail until it can): %s", name, exc)

    def start(self) -> None:
        log.info(
            "rule set %s: %d rule(s) from %s",
            self.rule_set.version[:12],
            len(self.rule_set.rules),
            self.settings.rules_dir,
        )
        if not self.settings.preload_networks:  # with it, the pipeline thread loads them (`_work`)
            self._import_network_code()
        self.pipeline.recover()
        completion = self.settings.completion
        tick = max(0.2, min(completion.release_quiet_seconds, completion.long_quiet_seconds) / 2)
        self.housekeeping.every("completion", tick, self.wake)
        self.housekeeping.every("dispatch", self.settings.dispatch.poll_seconds, self.dispatcher.deliver_due)
        self.housekeeping.every(
            "retention", 3600, lambda: purge_expired(self.db, self.spool, self.settings.storage.retention_days)
        )
        self.housekeeping.every("rules-watch", 2.0, self.rules.reload_if_changed)
        watchdog = self.pipeline.watchdog
        watchdog.before_exit = lambda: self.receiver.stop(self.settings.node.drain_seconds)
        self.housekeeping.every("job-watchdog", min(5.0, watchdog.limit_seconds / 4), watchdog.check)
        if self.shadow is not None:
            self.housekeeping.every("shadow-rules-watch", 2.0, self.shadow.reload_if_changed)
        self.housekeeping.start()
        self._worker.start()
        self.receiver.start()
        if self.settings.http.enabled:
            self.web = OpsServer(self)
            self.web.start()
        self.wake()  # inputs left unrouted by the last run
        self.pid_file.write_text(f"{os.getpid()}\n")

    def stop(self) -> None:
        """Refuse new associations and let those in progress end, finish the job in progress, stop housekeeping.

        The associations drain (up to node.drain_seconds) while the job finishes (up to stop_timeout_seconds from
        the stop); what arrives meanwhile is stored and routed at the next start."""
        log.info("stopping: no new associations; finishing those in progress and the job in progress")
        deadline = time.monotonic() + self.settings.stop_timeout_seconds
        self._stopping.set()
        self._wake.set()
        self.receiver.stop(self.settings.node.drain_seconds)
        if self.web is not None:
            self.web.stop()
        if self._worker.is_alive():
            self._worker.join(timeout=max(0.0, deadline - time.monotonic()))
        self.housekeeping.stop()
        self.db.dispose()
        self.pid_file.unlink(missing_ok=True)
        self.spool.close()
        log.info("stopped")

    def _work(self) -> None:
        # Every torch computation of the node runs on this thread, loading the weights included. Each thread that
        # runs one of torch's parallel regions keeps its own pool of OpenMP workers, and once two such pools exist,
        # a forward pass here took 1.7 times as long on 2 cores (weights loaded on the main thread: thyroid
        # 17 -> 30 ms; benchmarks/RESULTS.md).
        if self.settings.preload_networks:
            self._preload_networks()
        while not self._stopping.is_set():
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.pipeline.route_ready()
                while not self._stopping.is_set() and self.pipeline.run_next_job():
                    self.housekeeping.run_soon("dispatch")
            except Exception:  # the worker must survive anything one unit or job throws
                log.exception("pipeline step failed; will retry on the next wake-up")
