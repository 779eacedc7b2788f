"""A node whose only job hangs, run as its own process by tests/test_job_watchdog.py: the watchdog must end it.

Usage: python -m tests.hung_job_node ROOT. ROOT gets the node's spool and index; the process is expected to
exit with the watchdog's status (75) once the job passes its 0.5 s limit."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from scintnode.models.registry import Network, Registry
from scintnode.node import Node
from tests.test_job_watchdog import hung_job_settings, pending_job


def never_loads() -> Network:
    threading.Event().wait()  # a network whose loading never returns: the worker is stuck in this job
    raise AssertionError("unreachable")


def main(root: Path) -> int:
    node = Node(hung_job_settings(root), registry=Registry({"thyroid-resnet34": never_loads}))
    with node.db.session() as session:
        session.add(pending_job("hangs"))
    node.start()
    time.sleep(60)  # the watchdog exits the process long before this
    node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
