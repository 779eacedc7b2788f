"""`scintnode serve`: runs the node in the foreground until SIGTERM or SIGINT, then stops it cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from scintnode.config import ConfigError, load_settings
from scintnode.heap_reuse import keep_freed_memory_for_reuse
from scintnode.huge_pages import avoid_numpy_huge_pages
from scintnode.route import RuleError
from scintnode.spool_slots import SpoolInUse


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs every PDU at INFO; its warnings and errors are what an operator needs
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies at INFO


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scintnode serve", description="Run the scintnode DICOM node.")
    parser.add_argument("--config", type=Path, help="YAML configuration (default: embedded defaults)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    log = logging.getLogger("scintnode")
    try:
        settings = load_settings(args.config)
        from scintnode.node import Node  # imports torch: only once the config is known to be good

        if avoid_numpy_huge_pages():
            log.info("numpy's transparent huge pages are off in this process (NUMPY_MADVISE_HUGEPAGE=1 keeps them)")
        if keep_freed_memory_for_reuse():
            log.info("malloc keeps freed memory for the next job (MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES overrides)")
        node = Node(settings)
    except (ConfigError, RuleError, SpoolInUse) as exc:
        log.error("%s", exc)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    def request_reload(_signum: int, _frame: FrameType | None) -> None:
        # reload off the signal handler: it reads files and writes the index
        threading.Thread(target=node.reload_rules, args=("SIGHUP",), name="rules-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    node.start()
    print(f"scintnode listening as {settings.node.ae_title} on port {node.port}", flush=True)
    while not stop.wait(0.5):
        pass
    node.stop()
    return 0
