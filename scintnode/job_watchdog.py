"""Fails a job that runs past its time limit and restarts the node, so one hung job cannot hold the worker.

A Python thread cannot be stopped from outside, so the only way to free the worker is a new process. The job
is marked failed (it is not run again) and the process exits with EXIT_HUNG_JOB, for its supervisor (the
container's restart policy, systemd's Restart=) to start it again. Before it exits, `before_exit` lets the
associations in progress end (the node refuses new ones and waits up to node.drain_seconds). Everything
acknowledged is already durable; a sender still cut off holds whatever was not acknowledged."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_HUNG_JOB = 75  # EX_TEMPFAIL: try again later
# how long the watchdog waits for a job's commit in progress before it exits anyway (the job then stays
# "running" and the next start re-queues it, or fails it after max_job_attempts)
_COMMIT_WAIT_SECONDS = 10.0


class JobWatchdog:
    """Knows which job the worker runs and since when; `check`, called on a timer, acts on one past the limit."""

    def __init__(self, limit_seconds: float, fail: Callable[[int, str], None]) -> None:
        self.limit_seconds = limit_seconds
        self._fail = fail
        self.exit_process: Callable[[int], None] = os._exit  # tests record the exit instead
        self.before_exit: Callable[[], None] = lambda: None  # the node drains its associations here
        self._lock = threading.Lock()
        self._current: tuple[int, float] | None = None
        # held while a job's outputs are committed, so a job is never both failed here and committed as done
        self._commit = threading.Lock()

    @contextmanager
    def running(self, job_id: int) -> Iterator[None]:
        with self._lock:
            self._current = (job_id, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._current = None

    @contextmanager
    def committing(self) -> Iterator[None]:
        with self._commit:
            yield

    def check(self) -> None:
        """Fail the job in progress and exit the process if the job has run longer than the limit."""
        overdue = self._overdue()
        if overdue is None:
            return
        job_id, started = overdue
        if self._commit.acquire(timeout=_COMMIT_WAIT_SECONDS):
            try:
                if self._overdue() != overdue:
                    return  # it finished meanwhile
                try:
                    self._fail(
                        job_id,
                        f"still running after {time.monotonic() - started:.0f} s, over the time limit of "
                        f"{self.limit_seconds:g} s (job_time_limit_seconds); the node exited (status {EXIT_HUNG_JOB}) "
                        "to free its worker, and the job is not run again",
                    )
                except Exception:  # the index may be what hangs: exit all the same, the next start re-queues it
                    log.exception("could not record job %d as failed", job_id)
                self._exit(job_id)
            finally:
                self._commit.release()
        else:
            self._exit(job_id)

    def _overdue(self) -> tuple[int, float] | None:
        """(job id, start) of the job in progress if it is past the limit."""
        with self._lock:
            current = self._current
        if current is None:
            return None
        _, started = current
        return current if time.monotonic() - started > self.limit_seconds else None

    def _exit(self, job_id: int) -> None:
        log.critical(
            "job %d has run past its time limit of %g s; exiting with status %d for the supervisor to restart the "
            "node, once the associations in progress end",
            job_id,
            self.limit_seconds,
            EXIT_HUNG_JOB,
        )
        try:
            self.before_exit()
        except Exception:  # the exit is what frees the worker: nothing may stand in its way
            log.exception("could not wait for the associations in progress; exiting all the same")
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit_process(EXIT_HUNG_JOB)
