"""Schedule: the periodic concerns of a running node on APScheduler 3.x, one job per concern.

Each job has max_instances=1 and coalesce=True, so a slow run is never overlapped or queued up."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self) -> None:
        self._scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}, timezone="UTC"
        )

    def every(self, name: str, seconds: float, action: Callable[[], object]) -> None:
        def guarded() -> None:
            try:
                action()
            except Exception:  # one failing concern must not stop the others or the scheduler
                log.exception("housekeeping job %s failed", name)

        self._scheduler.add_job(guarded, "interval", seconds=seconds, id=name, name=name)

    def run_soon(self, name: str) -> None:
        """Bring a job's next run forward to now (e.g. dispatch right after a job wrote outputs)."""
        job = self._scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=dt.datetime.now(dt.UTC))

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)  # lets a delivery in flight finish and record its outcome
